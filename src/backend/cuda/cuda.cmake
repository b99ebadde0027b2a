# CUDA backend: its kernels go into stdit_backend, the NCCL communicator into stdit_dist; the GPU
# test binary (tests/gpu) is defined here too. Included from the top-level CMakeLists.txt inside
# if(STDIT_CUDA), after the layer libraries exist.
#
# Architectures: STDIT_CUDA_ARCHS (CMakeLists.txt; sm_80, sm_86, sm_89 and sm_90a SASS, compute_80
# PTX). The wgmma/TMA kernels compile to empty bodies outside sm_90a and are chosen on sm_90 only
# (backend/policy.h). No --use_fast_math (softmax/exp/sin/cos must keep their full-precision
# semantics); -lineinfo for profilers.

# The kernels are an object library whose objects go into stdit_backend. They include core/tensor.h,
# which is C++20; CMake 3.25 knows no CUDA20 dialect flag for nvcc (and with CUDA_STANDARD unset
# it would derive CUDA20 from the required CXX_STANDARD 20), so the dialect is given by hand.
add_library(stdit_cuda_kernels OBJECT
  ${CMAKE_CURRENT_LIST_DIR}/cuda_backend.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_linear.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_fp8.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_norm.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_attention_tc.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_attention_bf16.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_attention_wgmma.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_sdpa.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_layout.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_conv.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_conv_cl.cu
  ${CMAKE_CURRENT_LIST_DIR}/cuda_dry_run.cu
)
set_target_properties(stdit_cuda_kernels PROPERTIES
  CUDA_ARCHITECTURES "${STDIT_CUDA_ARCHS}"
  CXX_STANDARD_REQUIRED OFF)   # no C++ sources here; stops the CUDA20 fallback
set_property(TARGET stdit_cuda_kernels PROPERTY CUDA_STANDARD)
target_compile_options(stdit_cuda_kernels PRIVATE -std=c++20 -O3 -lineinfo)
target_include_directories(stdit_cuda_kernels PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
target_link_libraries(stdit_cuda_kernels PRIVATE CUDA::cudart CUDA::cublasLt)
target_sources(stdit_backend PRIVATE $<TARGET_OBJECTS:stdit_cuda_kernels>)

# The fused GEMMs (cutlass_fp8_gemm.cu for fp8, cutlass_bf16_gemm.cu for bf16): CUTLASS 3 Hopper kernels, compiled for
# sm_90a only and only when CUTLASS's headers are found (scripts/setup.sh unpacks the pinned
# nvidia-cutlass wheel's include/ into /opt/cutlass-4.2.0.0; -DSTDIT_CUTLASS_INCLUDE=DIR points
# elsewhere). Without them, or without sm_90a among the architectures, the file compiles to a stub
# that says "not built": fp8 takes the unfused path, bf16 cuBLASLt's.
set(STDIT_CUTLASS_INCLUDE "/opt/cutlass-4.2.0.0/include" CACHE PATH "CUTLASS 3 headers (cutlass/, cute/)")
add_library(stdit_cuda_cutlass OBJECT ${CMAKE_CURRENT_LIST_DIR}/cutlass_fp8_gemm.cu ${CMAKE_CURRENT_LIST_DIR}/cutlass_bf16_gemm.cu)
set_property(TARGET stdit_cuda_cutlass PROPERTY CUDA_STANDARD)
target_include_directories(stdit_cuda_cutlass PRIVATE ${PROJECT_SOURCE_DIR}/src)
if(EXISTS "${STDIT_CUTLASS_INCLUDE}/cutlass/cutlass.h" AND "90a-real" IN_LIST STDIT_CUDA_ARCHS)
  message(STATUS "stdit: fused FP8 and BF16 GEMMs with CUTLASS from ${STDIT_CUTLASS_INCLUDE}")
  set_target_properties(stdit_cuda_cutlass PROPERTIES CUDA_ARCHITECTURES "90a-real" CXX_STANDARD_REQUIRED OFF)
  target_include_directories(stdit_cuda_cutlass SYSTEM PRIVATE ${STDIT_CUTLASS_INCLUDE})
  # NDEBUG in every build type: an assert inside the main loop serializes its wgmma instructions.
  target_compile_definitions(stdit_cuda_cutlass PRIVATE STDIT_CUTLASS NDEBUG)
  target_compile_options(stdit_cuda_cutlass PRIVATE -std=c++17 -O3 --expt-relaxed-constexpr)
else()
  message(STATUS "stdit: no CUTLASS headers at ${STDIT_CUTLASS_INCLUDE} (or no sm_90a): fp8 GEMMs unfused, bf16 GEMMs cuBLASLt only")
  set_target_properties(stdit_cuda_cutlass PROPERTIES CUDA_ARCHITECTURES "${STDIT_CUDA_ARCHS}" CXX_STANDARD_REQUIRED OFF)
  target_compile_options(stdit_cuda_cutlass PRIVATE -std=c++17 -O3)
endif()
target_link_libraries(stdit_cuda_cutlass PRIVATE CUDA::cudart)
target_sources(stdit_backend PRIVATE $<TARGET_OBJECTS:stdit_cuda_cutlass>)

# The NCCL communicator (dist layer): same flags, its own object library.
add_library(stdit_cuda_dist OBJECT ${PROJECT_SOURCE_DIR}/src/dist/nccl_comm.cu)
set_target_properties(stdit_cuda_dist PROPERTIES CUDA_ARCHITECTURES "${STDIT_CUDA_ARCHS}" CXX_STANDARD_REQUIRED OFF)
set_property(TARGET stdit_cuda_dist PROPERTY CUDA_STANDARD)
target_compile_options(stdit_cuda_dist PRIVATE -std=c++20 -O3 -lineinfo)
target_include_directories(stdit_cuda_dist PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/include)
target_link_libraries(stdit_cuda_dist PRIVATE CUDA::cudart)
target_sources(stdit_dist PRIVATE $<TARGET_OBJECTS:stdit_cuda_dist>)

# GPU tests: CudaBackend vs the CPU backend per op, and the model fixtures on the GPU. Not a ctest
# test (CI has no GPU): run scripts/gpu_check.sh on a GPU machine.
if(NOT DEFINED STDIT_TESTS OR STDIT_TESTS)
  find_package(GTest)
  if(GTest_FOUND)
    set(_g ${PROJECT_SOURCE_DIR}/tests/gpu)
    # test_cuda_multi_gpu.cpp last: its failing-rank test must run after every other test.
    add_executable(stdit_gpu_tests ${_g}/gpu_test_util.cpp ${_g}/test_cuda_ops.cpp ${_g}/test_cuda_attention.cpp
                                   ${_g}/test_cuda_models.cpp ${_g}/test_cuda_perf.cpp ${_g}/test_cuda_multi_gpu.cpp)
    target_link_libraries(stdit_gpu_tests PRIVATE stdit_core GTest::gtest)
    # Drop libraries nothing in the binary calls (cuDNN, NCCL, libav*): fewer to carry over.
    target_link_options(stdit_gpu_tests PRIVATE -Wl,--as-needed)
    target_compile_definitions(stdit_gpu_tests PRIVATE
      STDIT_TEST_DATA="${PROJECT_SOURCE_DIR}/tests/data")
    set_target_properties(stdit_gpu_tests PROPERTIES
      RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/gpu)
    # The non-system libraries it needs, copied next to it for the GPU machine (gpu_check.sh).
    add_custom_command(TARGET stdit_gpu_tests POST_BUILD
      COMMAND ${PROJECT_SOURCE_DIR}/scripts/collect_libs.sh $<TARGET_FILE:stdit_gpu_tests>
              ${CMAKE_BINARY_DIR}/libs
      VERBATIM)
  else()
    message(STATUS "stdit: GTest not found, stdit_gpu_tests not built")
  endif()
endif()

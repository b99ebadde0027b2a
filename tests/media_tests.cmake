# Media tests (tests/test_media.cpp, tests/test_conditioning.cpp): included from tests/CMakeLists.txt after stdit_tests.
target_sources(stdit_tests PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/test_media.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/test_conditioning.cpp)

# `stdit generate` as users run it: real processes, signals and files (tests/cli/outputs.sh),
# one ctest per case so that they run in parallel; each in its own directory.
foreach(case concurrent sigint sigterm sigint_twice check_first errors from fp8)
  add_test(NAME cli_outputs_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/outputs.sh $<TARGET_FILE:stdit>
                   ${CMAKE_BINARY_DIR}/cli_outputs/${case} ${case})
  set_tests_properties(cli_outputs_${case} PROPERTIES TIMEOUT 300 PASS_REGULAR_EXPRESSION "ok ${case}"
                       FAIL_REGULAR_EXPRESSION "FAIL \\[")
endforeach()

# Processes under mpirun (tests/cli/mpi.sh): the CPU backend's splits over processes against the
# same splits as threads, a bad split, a failing rank. Needs MPI (libopenmpi-dev, openmpi-bin).
if(MPI_CXX_FOUND AND MPIEXEC_EXECUTABLE)
  foreach(case tp2 cfg2 vae_split cfg_tp4 cp_threads cp2 cp_cfg4 cp_tp4 cp_i2v cp_cache cp_bad bad_split rank_fails sigint bench bench_bad mixed_shards)
    add_test(NAME cli_mpi_${case}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/mpi.sh $<TARGET_FILE:stdit> ${MPIEXEC_EXECUTABLE}
                     ${CMAKE_BINARY_DIR}/cli_mpi/${case} ${case})
    set_tests_properties(cli_mpi_${case} PROPERTIES TIMEOUT 600 PASS_REGULAR_EXPRESSION "ok ${case}"
                         FAIL_REGULAR_EXPRESSION "FAIL \\[" RUN_SERIAL TRUE)
  endforeach()
endif()

# Media: video/image files (libav*, libx264 through libavcodec, libpng): the stdit_media library
# (above the core layer only). Included from the top-level CMakeLists.txt.
pkg_check_modules(LIBAV REQUIRED IMPORTED_TARGET libavformat libavcodec libswscale libavutil)
find_package(PNG REQUIRED)

add_library(stdit_media STATIC
  ${CMAKE_CURRENT_LIST_DIR}/frames.cpp
  ${CMAKE_CURRENT_LIST_DIR}/libav.cpp
  ${CMAKE_CURRENT_LIST_DIR}/video_io.cpp
  ${CMAKE_CURRENT_LIST_DIR}/image_io.cpp
  ${CMAKE_CURRENT_LIST_DIR}/resize.cpp
)
target_link_libraries(stdit_media PUBLIC stdit_base PkgConfig::LIBAV PNG::PNG)

# Pixel mapping and resizing must round every float operation as PyTorch does: no fused
# multiply-add contraction (matters if someone builds with -march=native).
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set_source_files_properties(
    ${CMAKE_CURRENT_LIST_DIR}/frames.cpp
    ${CMAKE_CURRENT_LIST_DIR}/resize.cpp
    PROPERTIES COMPILE_OPTIONS "-ffp-contract=off")
endif()

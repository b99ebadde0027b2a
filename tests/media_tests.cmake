# Media tests (tests/test_media.cpp): included from tests/CMakeLists.txt after stdit_tests.
target_sources(stdit_tests PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/test_media.cpp)

# Runs the program with arguments that must fail; passes only when it exits with status 1 and
# prints one "error: ..." line containing EXPECT (a crash or a silent failure does not pass).
separate_arguments(args UNIX_COMMAND "${ARGS}")
if(HIDE_GPUS)  # the run sees no GPU, whatever the machine has
  set(ENV{CUDA_VISIBLE_DEVICES} "-1")
endif()
execute_process(COMMAND ${STDIT} ${args} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 1)
  message(FATAL_ERROR "expected exit status 1, got '${rc}'\n${out}${err}")
endif()
string(FIND "${err}" "error: " at)
string(FIND "${err}" "${EXPECT}" found)
if(at EQUAL -1 OR found EQUAL -1)
  message(FATAL_ERROR "expected an 'error: ...${EXPECT}...' message, got:\n${err}")
endif()

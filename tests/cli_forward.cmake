# Runs `stdit forward dit` on fixture (a) and checks the output against the PyTorch reference.
execute_process(COMMAND ${STDIT} forward dit --model ${DATA}/stdit3_a --inputs ${DATA}/stdit3_a/inputs.safetensors
                        --output ${OUT} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "stdit forward dit failed (${rc})")
endif()
execute_process(COMMAND ${STDIT} compare ${OUT} ${DATA}/stdit3_a/expected.safetensors --tol 1e-4 RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "stdit forward dit output differs from the reference (${rc})")
endif()

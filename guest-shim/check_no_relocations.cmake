# Build step: the assembled guest code must carry no relocations. Its bytes
# are copied into the guest by hvpatch; a relocation would be resolved by
# the host linker against a host address and silently corrupt the blob.
# Usage: cmake -DREADELF=... -DOBJECT=... -P check_no_relocations.cmake
execute_process(COMMAND ${READELF} --relocs ${OBJECT}
                OUTPUT_VARIABLE relocations RESULT_VARIABLE status)
if(NOT status EQUAL 0)
  file(REMOVE ${OBJECT})
  message(FATAL_ERROR "${READELF} --relocs ${OBJECT} failed (${status})")
endif()
if(NOT relocations MATCHES "There are no relocations in this file")
  file(REMOVE ${OBJECT})
  message(FATAL_ERROR "${OBJECT} has relocations; guest code must be self-contained:\n${relocations}")
endif()

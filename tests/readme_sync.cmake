# ctest readme_sync: README.md's ```cpp block must equal examples/readme/main.cpp,
# which the build compiles and ctest runs, so the README example cannot rot.
#   cmake -DREADME=<README.md> -DEXAMPLE=<main.cpp> -P readme_sync.cmake
foreach(var README EXAMPLE)
  if(NOT DEFINED ${var} OR NOT EXISTS "${${var}}")
    message(FATAL_ERROR "readme_sync: pass -D${var}=<existing file> (got '${${var}}')")
  endif()
endforeach()

file(READ "${README}" readme)
file(READ "${EXAMPLE}" example)
string(REPLACE "\r\n" "\n" readme "${readme}")
string(REPLACE "\r\n" "\n" example "${example}")

set(open_fence "```cpp\n")
string(FIND "${readme}" "${open_fence}" start)
if(start EQUAL -1)
  message(FATAL_ERROR "readme_sync: no ```cpp block in ${README}")
endif()
string(LENGTH "${open_fence}" fence_len)
math(EXPR start "${start} + ${fence_len}")
string(SUBSTRING "${readme}" ${start} -1 rest)
# The block ends at the first line that is a closing fence.
string(FIND "${rest}" "\n```" stop)
if(stop EQUAL -1)
  message(FATAL_ERROR "readme_sync: the ```cpp block in ${README} is not closed")
endif()
math(EXPR stop "${stop} + 1")  # keep the block's last newline
string(SUBSTRING "${rest}" 0 ${stop} block)

if(NOT block STREQUAL example)
  file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/readme_block.cpp" "${block}")
  message(FATAL_ERROR "readme_sync: the ```cpp block in ${README} differs from ${EXAMPLE}.\n"
                      "Make them identical (the block as read is in ${CMAKE_CURRENT_BINARY_DIR}/readme_block.cpp; "
                      "compare with: diff ${CMAKE_CURRENT_BINARY_DIR}/readme_block.cpp ${EXAMPLE}).")
endif()
message(STATUS "readme_sync: README.md's example matches ${EXAMPLE}")

# Warning flags shared by every vipc target.
add_library(vipc_warnings INTERFACE)
target_compile_options(vipc_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
  -Wunused -Woverloaded-virtual -Wconversion -Wsign-conversion -Wnull-dereference
  -Wdouble-promotion -Wformat=2 -Wimplicit-fallthrough)
if(VIPC_WERROR)
  target_compile_options(vipc_warnings INTERFACE -Werror)
endif()
install(TARGETS vipc_warnings EXPORT vipcTargets)

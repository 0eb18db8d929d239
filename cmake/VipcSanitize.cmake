# VIPC_SANITIZE selects sanitizers for every target: "address;undefined" or "thread".
if(VIPC_SANITIZE)
  string(REPLACE ";" "," _vipc_san "${VIPC_SANITIZE}")
  add_compile_options(-fsanitize=${_vipc_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_vipc_san})
  if("${VIPC_SANITIZE}" MATCHES "thread")
    add_compile_definitions(VIPC_TSAN=1)
  endif()
endif()

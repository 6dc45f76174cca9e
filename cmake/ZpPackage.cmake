# ZpPackage.cmake: what `cmake --install` needs to make an installed zeroplace usable as an SDK:
# the CMake package (zp-config.cmake, zp-config-version.cmake, zp-targets.cmake) and zp.pc.
# Invariants:
# - Every path inside the generated files is relative to the file's own location (the CMake
#   package computes its prefix from CMAKE_CURRENT_LIST_DIR, zp.pc from ${pcfiledir}), so
#   `cmake --install BUILD --prefix P` gives a working package for any P.
# - zp::core's link dependencies are read from the zpcore target itself at the end of
#   configuration (deferred call), so a dependency added to zpcore later is carried along;
#   they are written as resolved library files/flags, so find_package(zp) needs no
#   find_dependency() and a plugin project needs nothing but a C compiler.
# - Plugins need only zp::plugin (the header); they never link against the core.
include(CMakePackageConfigHelpers)

# ABI version from the header (the header is the single source of truth).
# the ABI version is read from the header: re-configure when it changes (zp.pc, zp-config)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${CMAKE_SOURCE_DIR}/include/zp/zp_plugin.h")
file(STRINGS "${CMAKE_SOURCE_DIR}/include/zp/zp_plugin.h" _zp_abi REGEX "^#define ZP_ABI_(MAJOR|MINOR) ")
string(REGEX REPLACE ".*ZP_ABI_MAJOR ([0-9]+).*" "\\1" ZP_ABI_MAJOR "${_zp_abi}")
string(REGEX REPLACE ".*ZP_ABI_MINOR ([0-9]+).*" "\\1" ZP_ABI_MINOR "${_zp_abi}")

# "-L<dir> -l<name>" for a library file, the item itself otherwise (pkg-config form).
function(_zp_pc_item item out)
  if(IS_ABSOLUTE "${item}" AND item MATCHES "/lib([^/]+)\\.(so|a)(\\.[0-9.]*)?$")
    get_filename_component(_d "${item}" DIRECTORY)
    set(${out} "-L${_d} -l${CMAKE_MATCH_1}" PARENT_SCOPE)
  elseif(item MATCHES "^-" OR IS_ABSOLUTE "${item}")
    set(${out} "${item}" PARENT_SCOPE)
  else()
    set(${out} "-l${item}" PARENT_SCOPE)
  endif()
endfunction()

# Called (deferred) at the end of the top-level CMakeLists.txt.
function(zp_sdk_write_package)
  get_target_property(_libs zpcore LINK_LIBRARIES)
  set(_cm "")   # zp::core INTERFACE_LINK_LIBRARIES
  set(_pc "")   # zp.pc Libs.private
  foreach(l IN LISTS _libs)
    set(_items "")
    if(l MATCHES "^PkgConfig::(.+)$")
      set(_v "${CMAKE_MATCH_1}")
      if(${_v}_LINK_LIBRARIES)
        set(_items ${${_v}_LINK_LIBRARIES})
      else()
        get_target_property(_items ${l} IMPORTED_LOCATION)
      endif()
    elseif(l STREQUAL "OpenMP::OpenMP_C")
      set(_items ${OpenMP_C_LIBRARIES})
    elseif(l STREQUAL "Threads::Threads")
      set(_items ${CMAKE_THREAD_LIBS_INIT})
    elseif(TARGET "${l}" OR l MATCHES "^\\$<")
      message(WARNING "zp: the installed package cannot express zpcore's dependency '${l}': add a rule in cmake/ZpPackage.cmake")
    else()
      set(_items "${l}")
    endif()
    foreach(i IN LISTS _items)
      if(i AND NOT i MATCHES "-NOTFOUND$")
        list(APPEND _cm "${i}")
        _zp_pc_item("${i}" _p)
        list(APPEND _pc "${_p}")
      endif()
    endforeach()
  endforeach()
  # one -L per directory, then the libraries in link order
  string(REPLACE " " ";" _pc "${_pc}")
  set(_pcL "")
  set(_pcl "")
  foreach(t IN LISTS _pc)
    if(t MATCHES "^-L")
      list(APPEND _pcL "${t}")
    else()
      list(APPEND _pcl "${t}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _pcL)
  list(REMOVE_DUPLICATES _pcl)
  string(JOIN " " ZP_PC_LIBS_PRIVATE ${_pcL} ${_pcl})
  set(ZP_CORE_LINK_DEPS "${_cm}")

  set(_cmdir "${CMAKE_INSTALL_LIBDIR}/cmake/zp")
  set(_pcdir "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
  file(RELATIVE_PATH ZP_CMAKE_TO_PREFIX "/p/${_cmdir}" "/p")
  file(RELATIVE_PATH ZP_PC_TO_PREFIX "/p/${_pcdir}" "/p")
  string(REGEX REPLACE "/$" "" ZP_CMAKE_TO_PREFIX "${ZP_CMAKE_TO_PREFIX}")
  string(REGEX REPLACE "/$" "" ZP_PC_TO_PREFIX "${ZP_PC_TO_PREFIX}")
  set(ZP_PLUGIN_DIR_REL "${CMAKE_INSTALL_LIBDIR}/zp/plugins")
  set(_gen "${CMAKE_BINARY_DIR}/sdk")
  configure_package_config_file("${CMAKE_SOURCE_DIR}/cmake/zp-config.cmake.in" "${_gen}/zp-config.cmake"
    INSTALL_DESTINATION "${_cmdir}"
    PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_BINDIR ZP_PLUGIN_DIR_REL)
  if(PROJECT_VERSION_MAJOR EQUAL 0)
    set(_compat SameMinorVersion)   # 0.x: a minor release may change anything
  else()
    set(_compat SameMajorVersion)
  endif()
  write_basic_package_version_file("${_gen}/zp-config-version.cmake" VERSION "${PROJECT_VERSION}" COMPATIBILITY ${_compat})
  configure_file("${CMAKE_SOURCE_DIR}/cmake/zp-targets.cmake.in" "${_gen}/zp-targets.cmake" @ONLY)
  configure_file("${CMAKE_SOURCE_DIR}/cmake/zp.pc.in" "${_gen}/zp.pc" @ONLY)
  install(FILES "${_gen}/zp-config.cmake" "${_gen}/zp-config-version.cmake" "${_gen}/zp-targets.cmake" DESTINATION "${_cmdir}")
  install(FILES "${_gen}/zp.pc" DESTINATION "${_pcdir}")
endfunction()

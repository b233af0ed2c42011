// `import clusiam_fast._C` loads this library, whose static initialisers
// register the ops; the module itself is empty. (Not part of the CMake build.)
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

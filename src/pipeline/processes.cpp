// The public API's view of mpirun processes (include/stdit/stdit.h, "Processes").
#include "dist/process.h"
#include "stdit/stdit.h"

namespace stdit::api {

Processes processes_init(int* argc, char*** argv) {
  process_world_init(argc, argv);
  const ProcessWorld& w = process_world();
  return {w.rank, w.size, w.local_rank};
}

Processes processes() {
  const ProcessWorld& w = process_world();
  return {w.rank, w.size, w.local_rank};
}

void processes_finalize() { process_world_finalize(); }
bool processes_running() { return process_world_running(); }
void processes_abort(int code) { process_world_abort(code); }

}  // namespace stdit::api

// Several processes (one per GPU, or per CPU rank), launched by `mpirun`: the world they form, the
// collectives the pipeline needs between them, and a host communicator for model ranks in
// different processes. MPI only bootstraps and carries host data; without mpirun (or in a build
// without MPI) the world is one process and nothing here talks to anyone.
#pragma once
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "dist/comm.h"

namespace stdit {

struct ProcessWorld {
  int rank = 0, size = 1;  // in MPI_COMM_WORLD
  int local_rank = 0;      // among the processes of this host (picks the GPU)
  bool active() const { return size > 1; }
};

// Starts MPI when the process was launched by mpirun with more than one rank (OMPI_COMM_WORLD_SIZE
// or PMI_SIZE > 1). Call once, first thing in main.
void process_world_init(int* argc, char*** argv);
const ProcessWorld& process_world();
// Ends MPI normally (every rank calls it).
void process_world_finalize();
// Ends every process of the world with `code` (an error on one rank must not leave the others
// waiting in a collective). Returns normally when the world is one process.
void process_world_abort(int code);
// Every rank passes whether it may go on; true when all may (a collective of the whole world).
bool process_world_agree(bool ok);
// The lowest world rank that passes ok = false, or -1 when every rank passes true (a collective).
int process_world_first_failure(bool ok);
// Set while a request runs across the processes (errors then end every process).
void process_world_set_running(bool running);
bool process_world_running();

// After a step every process takes before a run (opening the engine, planning a request): err is
// this process's failure, if any. One process: rethrows it. Several: the lowest failing process
// rethrows its error, the others throw RefusedElsewhere; nothing when none failed.
void process_world_sync(std::exception_ptr err);

// Rank 0's value on every rank.
uint64_t process_world_broadcast(uint64_t v);

// In place over the whole world, for host F32 tensors of one shape where each element is non-zero
// on at most one rank (e.g. the frames of a split VAE decode): the sum, exact in any order.
void process_world_sum_disjoint(Tensor& t);
// Rank 0's contents of `t` (contiguous host, the same shape everywhere) on every rank.
void process_world_broadcast_tensor(Tensor& t);

// A communicator over the world ranks `ranks` (this process among them, in that order): host F32
// tensors, the sum in rank order, so a split over processes gives the bits a split over threads
// (make_host_group) gives. Collective: every process of the world calls it with its group.
// With `device` a CUDA backend: an NCCL communicator over those processes' GPUs instead (the
// group's first process makes the unique id, MPI carries it), for device tensors.
std::unique_ptr<Communicator> make_process_comm(const std::vector<int>& ranks, Backend* device = nullptr);

}  // namespace stdit

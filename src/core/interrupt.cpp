#include "core/interrupt.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstring>

namespace stdit {

namespace {

std::atomic<int> g_signals{0};

constexpr int kSlots = 256;
struct Slot {
  std::atomic<bool> used{false};
  std::atomic<bool> live{false};  // path fully written, visible to the handler
  bool only_if_empty = false;     // a name reservation: never remove a finished file
  char path[PATH_MAX];
};
Slot g_slots[kSlots];

void on_signal(int sig) {
  if (g_signals.fetch_add(1) == 0) return;  // first signal: the job stops at its next step boundary
  // Second signal: the user insists. Remove what we registered, then leave.
  for (auto& s : g_slots) {
    if (!s.live.load()) continue;
    struct stat st;
    if (s.only_if_empty && (::stat(s.path, &st) != 0 || st.st_size != 0)) continue;
    ::unlink(s.path);
  }
  static const char msg[] = "\ninterrupted again: stopped at once, temporary files removed\n";
  const ssize_t ignored = ::write(2, msg, sizeof msg - 1);
  (void)ignored;
  (void)sig;
  ::_exit(130);
}

}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool interrupt_requested() { return g_signals.load() > 0; }

void check_interrupted() {
  if (interrupt_requested()) throw Interrupted();
}

void request_interrupt() { g_signals.fetch_add(1); }

void clear_interrupt() { g_signals.store(0); }

CleanupPath::CleanupPath(const std::string& path, bool only_if_empty) {
  if (path.size() >= PATH_MAX) return;
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (g_slots[i].used.compare_exchange_strong(expected, true)) {
      std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
      g_slots[i].only_if_empty = only_if_empty;
      g_slots[i].live.store(true);
      slot_ = i;
      return;
    }
  }
}

CleanupPath::~CleanupPath() { release(); }

void CleanupPath::release() {
  if (slot_ < 0) return;
  g_slots[slot_].live.store(false);
  g_slots[slot_].used.store(false);
  slot_ = -1;
}

}  // namespace stdit

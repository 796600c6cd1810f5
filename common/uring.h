// io_uring set-up shared by the event loops.
#pragma once

#include <liburing.h>

namespace pbrick {

// Initialises `ring` so that completion task work runs when the loop asks for
// completions instead of interrupting it (COOP_TASKRUN), falling back to the
// defaults on kernels before 5.19. Rings here are created on one thread and
// driven by another, so they are not single-issuer rings.
// Returns 0 or -errno, as io_uring_queue_init does.
inline int init_event_ring(unsigned entries, io_uring* ring) {
  int err = io_uring_queue_init(entries, ring, IORING_SETUP_COOP_TASKRUN);
  if (err == -EINVAL) err = io_uring_queue_init(entries, ring, 0);
  return err;
}

}  // namespace pbrick

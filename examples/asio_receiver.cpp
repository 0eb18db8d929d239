// Driving vipc from a standalone Asio event loop: the endpoint's poll_fd() is wrapped in
// an asio::posix::stream_descriptor and waited on with async_wait; a sender process
// sends numbered messages; the loop takes them until WouldBlock and re-arms. A timer
// runs beside it, to show the loop stays free for other work.
//
//   vipc_asio_receiver [messages]
#include <sys/wait.h>
#include <unistd.h>

#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "vipc/channel.hpp"
#include "vipc/runtime.hpp"

int main(int argc, char** argv) {
  const unsigned long total = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 100000;
  auto rt = vipc::Runtime::embedded();
  if (!rt) return std::fprintf(stderr, "asio: %s\n", rt.error().message().c_str()), 1;
  auto ep = vipc::Endpoint::create(*rt, "asio-events");
  if (!ep) return std::fprintf(stderr, "asio: %s\n", ep.error().message().c_str()), 1;

  std::fflush(nullptr);
  const pid_t sender = ::fork();
  if (sender == 0) {
    auto srt = vipc::Runtime::connect_to(rt->socket_path());
    if (!srt) ::_exit(10);
    auto ch = vipc::Channel::connect(*srt, "asio-events");
    if (!ch) ::_exit(11);
    for (unsigned long i = 0; i < total; ++i) {
      if (!ch->send(vipc::SmallMessage(1, &i, sizeof i), std::chrono::seconds(10))) ::_exit(12);
    }
    ch->close();
    ::_exit(0);
  }

  asio::io_context io;
  // Asio owns (and closes) its descriptor: give it a duplicate of the endpoint's.
  asio::posix::stream_descriptor events(io, ::dup(ep->poll_fd()));
  asio::steady_timer ticker(io);
  unsigned long next = 0, wakeups = 0, ticks = 0;
  bool failed = false;

  std::function<void()> arm;
  auto drain = [&] {
    vipc::SmallMessage m;
    for (;;) {
      auto r = ep->try_receive(m);
      if (!r) {
        if (r.error().code() != vipc::ErrorCode::WouldBlock) failed = true;
        return;
      }
      unsigned long v = 0;
      std::memcpy(&v, m.data.data(), sizeof v);
      if (v != next) failed = true;
      ++next;
    }
  };
  arm = [&] {
    if (failed || next >= total) {
      io.stop();
      return;
    }
    auto armed = ep->arm_poll_fd();
    if (!armed) {
      failed = true;
      io.stop();
      return;
    }
    if (!*armed) {  // something is pending already
      asio::post(io, [&] {
        drain();
        arm();
      });
      return;
    }
    events.async_wait(asio::posix::stream_descriptor::wait_read, [&](const asio::error_code& ec) {
      if (ec) {
        failed = true;
        io.stop();
        return;
      }
      ++wakeups;
      drain();
      arm();
    });
  };
  std::function<void()> tick = [&] {
    ticker.expires_after(std::chrono::milliseconds(10));
    ticker.async_wait([&](const asio::error_code& ec) {
      if (ec) return;
      ++ticks;
      tick();
    });
  };
  arm();
  tick();
  // The ready set heals lost marks by a rescan every 100 ms; a bounded run_for keeps
  // the example from waiting forever if the sender died.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!io.stopped() && std::chrono::steady_clock::now() < deadline) {
    io.run_for(std::chrono::milliseconds(100));
    if (!io.stopped() && next < total) {
      events.cancel();  // re-arm after a quiet 100 ms (the rescan interval)
      io.restart();
      arm();
    }
  }
  int status = 0;
  ::waitpid(sender, &status, 0);
  std::printf("asio: %lu messages in order, %lu wake-ups of the event loop, %lu timer ticks\n",
              next, wakeups, ticks);
  const bool ok = !failed && next == total && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return ok ? 0 : 1;
}

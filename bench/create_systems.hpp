// `vipc bench create`: creating a channel and connecting a sender to one, beside a plain
// Unix-domain request/reply round trip to an epoll server.
//
// Everything runs in one process, as a client thread and a server thread, in the same
// situation for every system: the client is the measuring thread (pinned to
// CpuPair::self by RunGuard); the server is a thread started for the measurement and
// pinned to `server_cpu` (the scenario measures every system with the server on the
// other CPU and on the client's own CPU). For `uds` the server is a plain epoll loop on
// a listening AF_UNIX socket; for vipc it is the real broker, run by
// vipc::Runtime::embedded() on a private socket. Each measurement (round) starts its own
// server, so nothing carries over from one round to the next. A sample is one
// operation, timed alone with the cycle counter; what must be undone so that the next
// sample starts from the same state (destroying the channel, releasing the sender) is
// done outside the timed interval.
#pragma once

#include <cstddef>

#include "harness.hpp"

namespace vipc::bench::create_systems {

// uds: one request/reply round trip of `bytes` bytes each way over one connected
// AF_UNIX socket (of type uds_transport_name()) to a server thread running an epoll
// loop; the client blocks in recv(2) for the reply.
Round uds_request_reply(const RunConfig& cfg, int server_cpu, std::size_t bytes);
// The socket type uds_request_reply uses, for the notes ("SOCK_SEQPACKET").
const char* uds_transport_name() noexcept;

// vipc, metric `connect`: vipc::Channel::connect() to an existing Endpoint (one broker
// round trip carrying three descriptors, then the client maps the ring). Untimed after
// each sample: one message is sent through the new channel, its capability released and
// the Channel destroyed; every `drain_every` samples the Endpoint takes its sender
// events and the messages (checked), so sender slots are reused.
Round vipc_connect(const RunConfig& cfg, int server_cpu, std::size_t drain_every);

// vipc, metric `create`: vipc::Endpoint::create() of a channel with a new name each
// time; the Endpoint is destroyed (its destructor destroys the channel) untimed.
Round vipc_create(const RunConfig& cfg, int server_cpu);

// vipc-audited, metric `create`: vipc_create with the broker's audit trail on (every
// control operation recorded; docs/policy.md), written to a private temporary directory
// removed afterwards.
Round vipc_create_audited(const RunConfig& cfg, int server_cpu);

// vipc-anonymous, metric `create`: vipc::Endpoint::create_anonymous() (a channel with no
// name, taken from the Runtime's pool of prepared channels, which the taking thread
// tops up when it runs low). Untimed after each sample: the Endpoint is destroyed (its
// destructor sends the Destroy without waiting) and one Runtime::ping() round trip lets
// the broker catch up, so the loop runs at the pace of the named create.
Round vipc_create_anonymous(const RunConfig& cfg, int server_cpu);

}  // namespace vipc::bench::create_systems

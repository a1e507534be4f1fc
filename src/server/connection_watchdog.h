// Read deadlines and disconnect detection for the HTTP server's client connections.
//
// cpp-httplib times out each read separately, so a client that trickles one byte every few
// seconds keeps a worker thread forever, and a handler cannot see that the client of a
// non-streamed request went away. The watchdog fixes both from outside the library: a thread
// scans the process's sockets every `scan_interval` and finds the accepted connections (local
// port = the server's port), identified by their peer address as cpp-httplib reports it in
// Request::remote_addr / remote_port.
//
//   reading   from accept, and again after each response, until a handler starts: the whole
//             request (headers and body) must arrive within read_timeout, else the socket is
//             shut down (the worker's read fails, the connection closes) and counted.
//   handling  from handler_started(peer) until response_written(peer): no deadline (requests
//             have their own timeout); a peer that closed its side is marked gone, which
//             peer_gone(peer) reports to the handler.
//
// An idle keep-alive connection is in `reading` too, but after a response its deadline is
// keep_alive + read_timeout: cpp-httplib closes it when no request starts within keep_alive.
//
// Contract: thread-safe; start() once after the listening socket is bound, stop() before the
// sockets are closed for good (the destructor stops). Linux only (/proc/self/fd).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace kvs {

class connection_watchdog {
public:
    using clock = std::chrono::steady_clock;

    connection_watchdog() = default;
    ~connection_watchdog() { stop(); }
    connection_watchdog(const connection_watchdog&) = delete;
    connection_watchdog& operator=(const connection_watchdog&) = delete;

    // Watches the connections accepted on local_port (not the listening socket listen_fd).
    // read_timeout <= 0 disables the read deadline (disconnects are still detected).
    void start(int listen_fd, int local_port, double read_timeout_seconds, double keep_alive_seconds,
               std::chrono::milliseconds scan_interval = std::chrono::milliseconds(100));
    void stop();

    // The key of a peer as the handler sees it: "addr|port".
    static std::string peer_key(const std::string& remote_addr, int remote_port);

    void handler_started(const std::string& peer);
    void response_written(const std::string& peer);
    bool peer_gone(const std::string& peer) const;

    int64_t read_timeouts() const { return read_timeouts_.load(); }  // connections shut down for a slow request
    int64_t open_connections() const;                                 // as of the last scan

private:
    enum class phase { reading, handling };
    struct conn {
        int fd = -1;
        phase ph = phase::reading;
        clock::time_point since;
        bool gone = false;
        bool timed_out = false;  // shut down for its read deadline
        bool seen = false;  // seen by the current scan
    };
    void loop(std::chrono::milliseconds interval);
    void scan();

    int listen_fd_ = -1, port_ = -1;
    double read_timeout_ = 0, keep_alive_ = 0;
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool stop_ = false;
    std::map<std::string, conn> conns_;  // peer key -> state
    std::atomic<int64_t> read_timeouts_{0};
    std::thread thread_;
};

}  // namespace kvs

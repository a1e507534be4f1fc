#include "server/connection_watchdog.h"

#include <cstdlib>
#include <vector>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

namespace kvs {

namespace {

// The local port of a TCP socket, -1 for anything else.
int local_port_of(int fd) {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return -1;
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
    return -1;
}

// The peer's key as the handler sees it (cpp-httplib formats the address numerically).
bool peer_key_of(int fd, std::string* key) {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return false;
    char buf[INET6_ADDRSTRLEN] = {};
    int port;
    if (a.ss_family == AF_INET) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(a);
        if (!::inet_ntop(AF_INET, &in.sin_addr, buf, sizeof buf)) return false;
        port = ntohs(in.sin_port);
    } else if (a.ss_family == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
        if (!::inet_ntop(AF_INET6, &in6.sin6_addr, buf, sizeof buf)) return false;
        port = ntohs(in6.sin6_port);
    } else {
        return false;
    }
    *key = connection_watchdog::peer_key(buf, port);
    return true;
}

// The process's open descriptors.
std::vector<int> open_fds() {
    std::vector<int> out;
    DIR* d = ::opendir("/proc/self/fd");
    if (!d) return out;
    const int own = ::dirfd(d);
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        const int fd = std::atoi(e->d_name);
        if (fd != own) out.push_back(fd);
    }
    ::closedir(d);
    return out;
}

}  // namespace

std::string connection_watchdog::peer_key(const std::string& remote_addr, int remote_port) {
    return remote_addr + "|" + std::to_string(remote_port);
}

void connection_watchdog::start(int listen_fd, int local_port, double read_timeout_seconds, double keep_alive_seconds,
                                std::chrono::milliseconds scan_interval) {
    std::lock_guard<std::mutex> l(mu_);
    if (thread_.joinable()) return;
    listen_fd_ = listen_fd;
    port_ = local_port;
    read_timeout_ = read_timeout_seconds;
    keep_alive_ = keep_alive_seconds;
    stop_ = false;
    thread_ = std::thread([this, scan_interval] { loop(scan_interval); });
}

void connection_watchdog::stop() {
    {
        std::lock_guard<std::mutex> l(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void connection_watchdog::handler_started(const std::string& peer) {
    std::lock_guard<std::mutex> l(mu_);
    conn& c = conns_[peer];
    c.ph = phase::handling;
    c.since = clock::now();
    c.gone = false;
}

void connection_watchdog::response_written(const std::string& peer) {
    std::lock_guard<std::mutex> l(mu_);
    conn& c = conns_[peer];
    c.ph = phase::reading;
    // The next request may start as late as the keep-alive timeout.
    c.since = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(keep_alive_));
}

bool connection_watchdog::peer_gone(const std::string& peer) const {
    std::lock_guard<std::mutex> l(mu_);
    auto it = conns_.find(peer);
    return it != conns_.end() && it->second.gone;
}

int64_t connection_watchdog::open_connections() const {
    std::lock_guard<std::mutex> l(mu_);
    int64_t n = 0;
    for (const auto& [key, c] : conns_) n += c.fd >= 0;
    return n;
}

void connection_watchdog::loop(std::chrono::milliseconds interval) {
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
        l.unlock();
        scan();
        l.lock();
        cv_.wait_for(l, interval, [&] { return stop_; });
    }
}

void connection_watchdog::scan() {
    const clock::time_point started = clock::now();
    // The accepted connections, found without the lock (system calls only).
    std::vector<std::pair<int, std::string>> found;  // fd, peer key
    for (int fd : open_fds()) {
        if (fd == listen_fd_ || local_port_of(fd) != port_) continue;
        std::string key;
        if (peer_key_of(fd, &key)) found.emplace_back(fd, std::move(key));
    }
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [key, c] : conns_) c.seen = false;
    for (const auto& [fd, key] : found) {
        auto [it, fresh] = conns_.try_emplace(key);
        conn& c = it->second;
        if (fresh) c.since = started;  // accepted since the last scan: its read time starts now
        c.fd = fd;
        c.seen = true;
        if (c.ph == phase::reading) {
            if (!c.timed_out && read_timeout_ > 0 && std::chrono::duration<double>(started - c.since).count() > read_timeout_) {
                // Wakes the worker blocked in poll/recv on this socket; it closes the connection.
                ::shutdown(fd, SHUT_RDWR);
                read_timeouts_.fetch_add(1);
                c.timed_out = true;  // counted once
            }
        } else if (!c.gone) {
            pollfd p{fd, POLLRDHUP, 0};
            if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) c.gone = true;
        }
    }
    // Connections closed since the last scan; entries a handler made during this scan stay.
    for (auto it = conns_.begin(); it != conns_.end();) {
        if (!it->second.seen && it->second.since < started) it = conns_.erase(it);
        else ++it;
    }
}

}  // namespace kvs

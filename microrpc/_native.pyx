# cython: language_level=3
"""The native transport: non-blocking TCP and Unix sockets driven from C.

Two drivers over the protocol core (_core.pyx):

* :class:`Channel`, the client side of one connection: sends frames and receives them in
  the calling thread (no helper thread on the request path; waking a thread on another
  core costs ~25 us on these machines, see DESIGN.md). Poll modes: ``block`` sleeps in
  poll(2); ``spin`` busy-polls the non-blocking socket for a bounded budget first (what
  Shenango/Caladan do with whole cores); ``adaptive`` spins only while replies have been
  arriving within the budget.
* :class:`ServerLoop`, the server's single I/O thread on epoll. Each pass reads every
  complete frame that ``recv`` returned, runs plain handlers to completion on this thread,
  and writes the replies of a pass with one ``send`` per connection. Handlers marked
  blocking run on a worker pool and post their replies back through an eventfd.

Sockets are created and connected in Python (microrpc/transport.py: setup is not hot);
their fds are handed over here and owned from then on.
"""
import collections
import pickle
import sys
import traceback

import msgpack

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
# On Linux EWOULDBLOCK == EAGAIN, so only EAGAIN is tested.
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint32_t, uint64_t

from microrpc._core cimport (
    CODEC_MSGPACK, CODEC_PICKLE, CODEC_RAW, ERR_BAD_REQUEST, ERR_DEADLINE, ERR_NOT_FOUND,
    ERR_OVERLOADED, ERR_REMOTE, ERR_TOO_LARGE, ERR_UNAVAILABLE, FLAG_HAS_CREDIT, Frame,
    FrameParser, HEADER_SIZE, KIND_CANCEL, KIND_CREDIT, KIND_ERROR, KIND_PING, KIND_PONG,
    KIND_REQUEST, KIND_RESPONSE, OutBuffer,
)
from microrpc.errors import ConnectionLost, DeadlineExceeded, MessageTooLarge, ProtocolError


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t n)
    ssize_t write(int fd, const void* buf, size_t n)
    int close(int fd)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int accept4(int fd, void* addr, void* addrlen, int flags)
    int shutdown(int fd, int how)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL
    int SHUT_RDWR
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* ev)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    int EPOLL_CTL_ADD
    int EPOLL_CTL_MOD
    int EPOLL_CTL_DEL
    int EPOLLIN
    int EPOLLOUT
    int EPOLLERR
    int EPOLLHUP
    int EPOLL_CLOEXEC

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK
    int EFD_CLOEXEC


DEF POLL_BLOCK = 0
DEF POLL_SPIN = 1
DEF POLL_ADAPTIVE = 2

# Bytes asked of each recv(2): large enough that one call usually drains a burst of small
# frames (batching), small enough to stay in L2.
DEF RECV_CHUNK = 65536
# A connection's reads in one server pass stop after this many bytes, so one flooding
# client cannot starve the others of the I/O thread.
DEF READ_BUDGET = 1048576
DEF MAX_EVENTS = 256

POLL_MODES = {"block": POLL_BLOCK, "spin": POLL_SPIN, "adaptive": POLL_ADAPTIVE}


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def monotonic_ns():
    """The clock every deadline in the native transport is measured on (CLOCK_MONOTONIC)."""
    return now_ns()


cdef struct Adaptive:
    # Adaptive polling: spin while spinning catches replies; stop when it does not (client
    # and server sharing a core, or an idle peer), and try again after a backoff when
    # sleeping shows that replies come back within the spin budget.
    int64_t spin_ns        # the configured budget
    int64_t budget         # the budget now (0: sleep at once)
    int64_t backoff        # sleeps needed before spinning is tried again (doubles, <= 1024)
    int64_t sleeps         # sleeps since the budget reached 0


cdef inline void adaptive_init(Adaptive* a, int64_t spin_ns) noexcept nogil:
    a.spin_ns = spin_ns
    a.budget = spin_ns
    a.backoff = 1
    a.sleeps = 0


cdef inline void adaptive_spun(Adaptive* a, bint caught) noexcept nogil:
    if caught:
        a.budget = a.spin_ns
        a.backoff = 1
    else:
        # A miss stops spinning at once: on a shared core every miss costs a whole budget.
        a.budget = 0
        a.sleeps = 0
        if a.backoff < 1024:
            a.backoff *= 2


cdef inline void adaptive_slept(Adaptive* a, int64_t waited_ns) noexcept nogil:
    if a.budget == 0:
        a.sleeps += 1
        if waited_ns < a.spin_ns and a.sleeps >= a.backoff:
            a.budget = a.spin_ns       # the reply came within the budget: spinning may pay


cdef inline int ms_ceil(int64_t ns) noexcept nogil:
    if ns <= 0:
        return 0
    if ns > <int64_t>3600000000000:
        return 3600 * 1000
    return <int>((ns + 999999) // 1000000)


cdef int send_pending(int fd, OutBuffer out, Py_ssize_t* sent) noexcept:
    """Send what ``out`` holds until it is empty or the socket is full, without blocking.
    Adds the bytes sent to ``sent[0]``. Returns 0 (all sent), EAGAIN (socket full) or the
    errno of a failed send."""
    cdef ssize_t n
    cdef int err = 0
    with nogil:
        while out.end > out.start:
            n = send(fd, out.buf + out.start, out.end - out.start, MSG_DONTWAIT | MSG_NOSIGNAL)
            if n > 0:
                sent[0] += n
                out.start += n
                continue
            err = errno if n < 0 else EAGAIN
            if err != EINTR:
                break
            err = 0
    if out.start >= out.end:
        out.consume(0)
    return err


cdef int wait_writable(int fd, int timeout_ms) noexcept:
    cdef pollfd pfd
    pfd.fd = fd
    pfd.events = POLLOUT
    with nogil:
        return poll(&pfd, 1, timeout_ms)


cdef object _oserror(str what, int err):
    import os
    return ConnectionLost(f"{what}: {os.strerror(err)}")


# ---------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------

cdef class Channel:
    """The client end of one connection (owns the fd). Not thread-safe by itself: the Python
    client serialises senders with one lock and lets one reader at a time call recv_frames."""
    cdef int fd
    cdef FrameParser parser
    cdef OutBuffer out
    cdef int poll_mode
    cdef int64_t spin_ns
    cdef Adaptive adaptive         # adaptive mode's spin budget
    cdef readonly bint closed
    cdef readonly uint64_t bytes_sent
    cdef readonly uint64_t bytes_received

    def __cinit__(self, int fd, Py_ssize_t max_message_size, str poll="block",
                  double spin_us=50.0):
        if poll not in POLL_MODES:
            raise ValueError(f"poll must be one of {sorted(POLL_MODES)}, not {poll!r}")
        self.fd = fd
        self.parser = FrameParser(max_message_size)
        self.out = OutBuffer()
        self.poll_mode = POLL_MODES[poll]
        self.spin_ns = <int64_t>(spin_us * 1000)
        adaptive_init(&self.adaptive, self.spin_ns)
        self.closed = False

    def __dealloc__(self):
        if not self.closed and self.fd >= 0:
            close(self.fd)

    def fileno(self):
        return self.fd

    def close(self):
        if not self.closed:
            self.closed = True
            shutdown(self.fd, SHUT_RDWR)
            close(self.fd)
            self.fd = -1

    cdef int _send_all(self, int64_t deadline) except -1:
        """Send everything in ``out``, waiting in poll(2) when the socket is full."""
        cdef Py_ssize_t sent = 0
        cdef int err
        cdef int64_t left
        while True:
            err = send_pending(self.fd, self.out, &sent)
            self.bytes_sent += sent
            sent = 0
            if err == 0:
                return 0
            if err != EAGAIN:
                self.close()
                raise _oserror("send failed", err)
            left = deadline - now_ns() if deadline else 1000000000
            if left <= 0:
                # Part of a frame may be on the wire: the stream is no longer usable.
                self.close()
                raise DeadlineExceeded("timed out sending the request (peer not reading)")
            wait_writable(self.fd, ms_ceil(left))

    def put_frame(self, int kind, uint64_t call_id, bytes name, bytes body, int codec=0,
                  uint32_t session=0, uint32_t deadline_us=0, uint32_t credit=0):
        """Queue one frame for the next flush (nothing is sent yet)."""
        if self.closed:
            raise ConnectionLost("connection is closed")
        if PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(body) > self.parser.max_message_size:
            raise MessageTooLarge(
                f"request of {PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(body)} bytes is over "
                f"the max_message_size limit of {self.parser.max_message_size}")
        self.out.put_frame(kind, 0, codec, call_id, session, deadline_us, credit,
                           PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                           PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))

    def flush(self, int64_t deadline_ns=0, bint wait=True):
        """Send the queued frames. With ``wait`` (the default) return once all are in the
        kernel; without, send what fits and return whether everything went."""
        if self.closed:
            raise ConnectionLost("connection is closed")
        if wait:
            self._send_all(deadline_ns)
            return True
        return self._send_nowait()

    def send_frame(self, int kind, uint64_t call_id, bytes name, bytes body, int codec=0,
                   uint32_t session=0, uint32_t deadline_us=0, uint32_t credit=0,
                   int64_t deadline_ns=0):
        """Queue one frame and send everything queued (returns when it is all in the kernel)."""
        self.put_frame(kind, call_id, name, body, codec, session, deadline_us, credit)
        self._send_all(deadline_ns)

    cdef bint _send_nowait(self) except -1:
        cdef Py_ssize_t sent = 0
        cdef int err = send_pending(self.fd, self.out, &sent)
        self.bytes_sent += sent
        if err == 0 or err == EAGAIN:
            return err == 0
        self.close()
        raise _oserror("send failed", err)

    cdef int _recv_some(self, bint wait, int64_t deadline) except -1:
        """One recv(2) into the parser. Returns bytes read, 0 if none are ready yet."""
        cdef ssize_t n
        cdef int err = 0
        cdef char* dst = self.parser.reserve(RECV_CHUNK)
        cdef int64_t spin_until, t, budget
        cdef pollfd pfd
        cdef int rc
        cdef int64_t left
        with nogil:
            n = recv(self.fd, dst, RECV_CHUNK, MSG_DONTWAIT)
            err = errno
            if n < 0 and (err == EAGAIN) and wait:
                budget = 0
                if self.poll_mode == POLL_SPIN:
                    budget = self.spin_ns
                elif self.poll_mode == POLL_ADAPTIVE:
                    budget = self.adaptive.budget
                if budget > 0:
                    # Busy-poll the socket for a bounded budget before sleeping.
                    t = now_ns()
                    spin_until = t + budget
                    if deadline and spin_until > deadline:
                        spin_until = deadline
                    while t < spin_until:
                        n = recv(self.fd, dst, RECV_CHUNK, MSG_DONTWAIT)
                        err = errno
                        if n >= 0 or (err != EAGAIN and err != EINTR):
                            break
                        t = now_ns()
                    if self.poll_mode == POLL_ADAPTIVE:
                        adaptive_spun(&self.adaptive, n > 0)
                if n < 0 and (err == EAGAIN or err == EINTR):
                    pfd.fd = self.fd
                    pfd.events = POLLIN
                    t = now_ns()
                    left = deadline - t if deadline else 0
                    if deadline == 0 or left > 0:
                        rc = poll(&pfd, 1, ms_ceil(left) if deadline else -1)
                        if rc > 0:
                            n = recv(self.fd, dst, RECV_CHUNK, MSG_DONTWAIT)
                            err = errno
                            if self.poll_mode == POLL_ADAPTIVE:
                                adaptive_slept(&self.adaptive, now_ns() - t)
        if n > 0:
            self.parser.commit(n)
            self.bytes_received += n
            return <int>n
        if n == 0:
            self.close()
            raise ConnectionLost("connection closed by the server")
        if err == EAGAIN or err == EINTR:
            return 0
        self.close()
        raise _oserror("recv failed", err)

    def recv_frames(self, int64_t deadline_ns=0, bint wait=True):
        """Frames that are whole now, reading from the socket if none are buffered.

        Waits (per the poll mode) until at least one frame is whole, or until the monotonic
        ``deadline_ns`` (0: no deadline), in which case it returns an empty list. With
        ``wait=False`` it only takes what the socket already holds.
        """
        cdef list frames = []
        cdef Frame f
        if self.closed:
            raise ConnectionLost("connection is closed")
        while True:
            f = self.parser.next_frame()
            while f is not None:
                frames.append(f)
                f = self.parser.next_frame()
            if frames:
                return frames
            if self._recv_some(wait, deadline_ns) == 0:
                if not wait or (deadline_ns and now_ns() >= deadline_ns):
                    return frames

# ---------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------

cdef class _Conn:
    cdef int fd
    cdef readonly uint64_t id
    cdef FrameParser parser
    cdef OutBuffer out
    cdef bint dirty            # on the loop's list of connections with bytes to send
    cdef bint want_write       # EPOLLOUT armed (the kernel buffer was full)
    cdef bint paused           # EPOLLIN disarmed: the peer is not reading its replies
    cdef bint closed
    cdef dict sessions         # wire session id -> policy sid
    cdef list deferred         # admitted requests held back while the peer is not reading
    cdef readonly str peer


cdef class _Request:
    """A request admitted and waiting to run (run queue or worker pool)."""
    cdef _Conn conn
    cdef Frame frame
    cdef int64_t arrival_ns
    cdef int64_t deadline_ns
    cdef object sid            # policy session id, or None without overload control
    cdef object entry          # (function, blocking)
    cdef bint cancelled
    cdef int64_t start_ns      # when an inline handler started it; 0 if it did not run inline


cdef class ServerLoop:
    """The server's I/O thread. Everything but stop() and the worker completions is only
    touched from the thread that runs :meth:`run`."""
    cdef int epfd
    cdef int wakefd
    cdef dict conns                # fd -> _Conn
    cdef set listen_fds
    cdef dict methods              # name bytes -> (function, blocking)
    cdef object executor
    cdef object completions        # deque of (conn, request, kind, body); thread-safe appends
    cdef object runq               # deque of _Request
    cdef list dirty
    cdef dict inflight             # (conn id, call id) -> _Request on the worker pool
    cdef object policy
    cdef bint policy_credits
    cdef int64_t tick_ns
    cdef int64_t next_tick
    cdef dict sid_conn             # policy sid -> (conn, wire session)
    cdef uint64_t next_sid
    cdef uint64_t next_conn_id
    cdef int accept_codecs         # bit mask of accepted codec ids
    cdef readonly Py_ssize_t max_message_size
    cdef Py_ssize_t out_limit
    cdef bint send_tracebacks
    cdef int poll_mode
    cdef int64_t spin_ns
    cdef Adaptive adaptive
    cdef int64_t batch_ns
    cdef int64_t loop_lag_ns
    cdef int64_t last_read_ns
    cdef readonly int64_t per_request_ns    # EWMA of the server's time per completed request
    cdef int64_t last_done_ns      # when the previous admitted request completed
    cdef object packer
    cdef public bint stopping
    cdef int64_t stop_deadline
    cdef readonly bint running
    # statistics
    cdef readonly uint64_t calls, errors, protocol_errors, rejects, bytes_in, bytes_out
    cdef readonly uint64_t connections_accepted, credit_frames, cancelled, deadline_skipped

    def __cinit__(self, dict methods, object executor, object policy, int accept_codecs,
                  Py_ssize_t max_message_size, bint send_tracebacks, str poll="block",
                  double spin_us=50.0, double batch_us=200.0):
        if poll not in POLL_MODES:
            raise ValueError(f"poll must be one of {sorted(POLL_MODES)}, not {poll!r}")
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wakefd < 0:
            close(self.epfd)
            raise OSError(errno, "eventfd failed")
        self._ctl(EPOLL_CTL_ADD, self.wakefd, EPOLLIN)
        self.conns = {}
        self.listen_fds = set()
        self.methods = methods
        self.executor = executor
        self.completions = collections.deque()
        self.runq = collections.deque()
        self.dirty = []
        self.inflight = {}
        self.policy = policy
        self.policy_credits = bool(policy is not None and policy.uses_credits)
        self.tick_ns = policy.tick_interval_ns if policy is not None else 0
        self.next_tick = 0
        self.sid_conn = {}
        self.next_sid = 1
        self.next_conn_id = 1
        self.accept_codecs = accept_codecs
        self.max_message_size = max_message_size
        # Replies queued for a peer that does not read are bounded: past this, the loop
        # stops reading that peer's requests until its replies drain.
        self.out_limit = max(4 * 1024 * 1024, max_message_size + HEADER_SIZE)
        self.send_tracebacks = send_tracebacks
        self.poll_mode = POLL_MODES[poll]
        self.spin_ns = <int64_t>(spin_us * 1000)
        adaptive_init(&self.adaptive, self.spin_ns)
        self.batch_ns = <int64_t>(batch_us * 1000)
        self.packer = msgpack.Packer()
        self.stopping = False
        self.running = False

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)
        if self.wakefd >= 0:
            close(self.wakefd)

    cdef int _ctl(self, int op, int fd, uint32_t events) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.fd = fd
        if epoll_ctl(self.epfd, op, fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl failed")
        return 0

    def add_listener(self, int fd):
        self.listen_fds.add(fd)
        self._ctl(EPOLL_CTL_ADD, fd, EPOLLIN)

    def wake(self):
        """Interrupt epoll_wait (any thread)."""
        cdef uint64_t one = 1
        write(self.wakefd, &one, 8)

    def post_completion(self, _Request req, int kind, bytes body):
        """A worker finished ``req`` (any thread): hand the reply to the I/O thread."""
        self.completions.append((req, kind, body))
        self.wake()

    def queue_depth(self):
        cdef _Conn c
        cdef Py_ssize_t held = 0
        for c in self.conns.values():
            held += len(c.deferred)
        return len(self.runq) + len(self.inflight) + held

    def buffered_output(self):
        """Reply bytes produced but not yet accepted by the peers' sockets."""
        cdef _Conn c
        cdef Py_ssize_t total = 0
        for c in self.conns.values():
            total += c.out.end - c.out.start
        return total

    def connection_count(self):
        return len(self.conns)

    # -- connections ------------------------------------------------------------------

    cdef int _accept(self, int lfd) except -1:
        cdef int fd
        cdef _Conn c
        import socket
        while True:
            with nogil:
                fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                return 0
            c = _Conn.__new__(_Conn)
            c.fd = fd
            c.id = self.next_conn_id
            self.next_conn_id += 1
            c.parser = FrameParser(self.max_message_size)
            c.out = OutBuffer()
            c.sessions = {}
            c.deferred = []
            try:
                s = socket.socket(fileno=fd)
                try:
                    if s.family in (socket.AF_INET, socket.AF_INET6):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c.peer = str(s.getpeername())
                finally:
                    s.detach()
            except OSError:
                c.peer = "?"
            self.conns[fd] = c
            self.connections_accepted += 1
            self._ctl(EPOLL_CTL_ADD, fd, EPOLLIN)

    cdef int _close_conn(self, _Conn c) except -1:
        if c.closed:
            return 0
        c.closed = True
        self.conns.pop(c.fd, None)
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.fd, NULL)
        close(c.fd)
        for r in c.deferred:
            self._finish_silently(r)        # nobody is left to answer; return the credit
        c.deferred = []
        if self.policy is not None:
            now = now_ns()
            for sid in c.sessions.values():
                self.sid_conn.pop(sid, None)
                self.policy.close_session(sid, now)
        c.sessions.clear()
        return 0

    cdef int _read(self, _Conn c, int64_t now) except -1:
        """Drain the socket (up to the read budget) and handle every whole frame."""
        cdef ssize_t n
        cdef int err = 0
        cdef char* dst
        cdef Py_ssize_t total = 0
        cdef Frame f
        while total < READ_BUDGET:
            dst = c.parser.reserve(RECV_CHUNK)
            with nogil:
                n = recv(c.fd, dst, RECV_CHUNK, MSG_DONTWAIT)
                err = errno
            if n > 0:
                c.parser.commit(n)
                total += n
                self.bytes_in += n
                if n < RECV_CHUNK:
                    break
                continue
            if n == 0:
                self._handle_frames(c, now)
                self._close_conn(c)
                return 0
            if err == EINTR:
                continue
            if err == EAGAIN:
                break
            self._close_conn(c)
            return 0
        self._handle_frames(c, now)
        return 0

    cdef int _handle_frames(self, _Conn c, int64_t now) except -1:
        cdef Frame f
        while not c.closed:
            if c.out.end - c.out.start > self.out_limit:
                # The peer is not reading its replies: leave the rest of its requests in the
                # parser until they drain (_flush resumes), so memory stays bounded.
                return 0
            try:
                f = c.parser.next_frame()
            except ProtocolError:
                # Lengths can no longer be trusted: drop this peer, keep serving the rest.
                self.protocol_errors += 1
                self._close_conn(c)
                return 0
            if f is None:
                return 0
            if f.kind == KIND_REQUEST:
                self._admit(c, f, now)
            elif f.kind == KIND_CANCEL:
                self._cancel(c, f.call_id)
            elif f.kind == KIND_PING:
                self._pong(c, f, now)
            else:
                # Responses, errors and credits only travel server -> client.
                self.protocol_errors += 1
                self._close_conn(c)
                return 0
        return 0

    cdef int _pong(self, _Conn c, Frame f, int64_t now) except -1:
        """Answer a ping. With a credit policy the pong registers the session and carries its
        first window: that is how a client learns, before its first call, that this server
        hands out credits (a pong without HAS_CREDIT means it does not)."""
        cdef int flags = 0
        cdef uint32_t window = 0
        if self.policy_credits:
            window = self.policy.open_session(self._session_id(c, f.session, now), now)
            flags = FLAG_HAS_CREDIT
            self.credit_frames += 1
        c.out.put_frame(KIND_PONG, flags, 0, f.call_id, f.session, 0, window, NULL, 0, NULL, 0)
        self._mark_dirty(c)
        return 0

    cdef object _session_id(self, _Conn c, uint32_t session, int64_t now):
        """The policy's id for (connection, wire session), registering it on first sight."""
        sid = c.sessions.get(session)
        if sid is None:
            sid = self.next_sid
            self.next_sid += 1
            c.sessions[session] = sid
            self.sid_conn[sid] = (c, session)
            self.policy.open_session(sid, now)
        return sid

    cdef inline int _mark_dirty(self, _Conn c) except -1:
        if not c.dirty:
            c.dirty = True
            self.dirty.append(c)
        return 0

    # -- requests ---------------------------------------------------------------------

    cdef int64_t _queue_delay(self, int64_t now) noexcept:
        """The congestion signal the policy sees: how long a request arriving now will wait
        before it starts, plus how far the loop is behind the socket (loop_lag_ns).

        The wait is the larger of two measures. The age of the oldest request not yet started
        is Breakwater's own signal, but it lags a burst: ten requests that arrived together
        are young, yet the last of them will wait ten service times. So the work queued ahead
        (requests in the run queue, at the measured time per request) counts too; it is what
        lets the AQM threshold bound the wait of what it admits.

        Only this thread's queue counts. A call running on the worker pool delays nobody on
        the I/O thread; counting it made one long blocking call reject every short call of
        other sessions while it ran."""
        cdef _Request head
        cdef int64_t d = 0, ahead
        if self.runq:
            head = self.runq[0]
            d = now - head.arrival_ns
        ahead = len(self.runq) * self.per_request_ns
        if ahead > d:
            d = ahead
        return d + self.loop_lag_ns

    cdef inline void _count_done(self, _Request r, int64_t now) noexcept:
        """Fold one completion of a handler run on this thread into per_request_ns: the time
        since it started or since the previous such completion, whichever is later. While the
        run queue is backlogged that is the time between completions (1 / throughput of the
        I/O thread, GIL contention included); after an idle spell it is the request's own
        service time. Worker-pool calls are not folded in: they do not hold up the run queue,
        and a long one would price every queued request at its duration."""
        cdef int64_t since
        if r.start_ns == 0:
            return                          # did not run on this thread: costs it no service
        since = r.start_ns if r.start_ns > self.last_done_ns else self.last_done_ns
        self.last_done_ns = now
        if self.per_request_ns == 0:
            self.per_request_ns = now - since
        else:                               # weight 1/32: exponential service is noisy
            self.per_request_ns += (now - since - self.per_request_ns) >> 5

    cdef int _admit(self, _Conn c, Frame f, int64_t now) except -1:
        cdef _Request r = _Request.__new__(_Request)
        r.conn = c
        r.frame = f
        r.arrival_ns = now
        r.deadline_ns = now + <int64_t>f.deadline_us * 1000 if f.deadline_us else 0
        r.sid = None
        self.calls += 1
        if self.stopping:
            self._reply_error(r, ERR_UNAVAILABLE, "Unavailable", "the server is stopping", None)
            return 0
        if self.policy is not None:
            sid = self._session_id(c, f.session, now)
            r.sid = sid
            if not self.policy.on_request(sid, f.credit, now, self._queue_delay(now)):
                self.rejects += 1
                self._reply_reject(r, now)
                return 0
        self.runq.append(r)
        return 0

    cdef int _cancel(self, _Conn c, uint64_t call_id) except -1:
        cdef _Request r = self.inflight.get((c.id, call_id))
        if r is not None:
            # Best effort: a worker that has not started it yet will skip it.
            r.cancelled = True
            self.cancelled += 1
            return 0
        for r in self.runq:
            if r.conn is c and r.frame.call_id == call_id:
                r.cancelled = True
                self.cancelled += 1
                break
        return 0

    cdef int _run_one(self, _Request r) except -1:
        """Start (inline, or on the worker pool) one request from the run queue."""
        cdef Frame f = r.frame
        cdef int64_t now
        if r.conn.out.end - r.conn.out.start > self.out_limit:
            r.conn.deferred.append(r)        # run once the peer has read its replies
            return 0
        if r.cancelled:
            # The client gave up and ignores the answer, but every request gets exactly one
            # response frame: the client's credit accounting counts on it.
            self._reply_error(r, ERR_DEADLINE, "Cancelled", "cancelled by the client", None)
            return 0
        entry = self.methods.get(f.name)
        if entry is None:
            self._reply_error(r, ERR_NOT_FOUND, "MethodNotFound",
                              f"no method named {f.name.decode('utf-8', 'replace')!r}", None)
            return 0
        if not (self.accept_codecs >> f.codec) & 1:
            self._reply_error(r, ERR_BAD_REQUEST, "ProtocolError",
                              f"this server does not accept codec {f.codec}", None)
            return 0
        if r.deadline_ns:
            now = now_ns()
            if now >= r.deadline_ns:
                self.deadline_skipped += 1
                self._reply_error(r, ERR_DEADLINE, "DeadlineExceeded",
                                  "deadline passed before the call started", None)
                return 0
        r.entry = entry
        if entry[1]:
            self.inflight[(r.conn.id, f.call_id)] = r
            self.executor.submit(_run_in_worker, self, r)
            return 0
        if self.policy is not None:          # only the overload signal needs the timing
            r.start_ns = now_ns()
        kind, body = execute(r, self.packer, self.send_tracebacks, self.max_message_size)
        self._reply(r, kind, body)
        return 0

    cdef int _reply(self, _Request r, int kind, bytes body) except -1:
        cdef _Conn c = r.conn
        cdef int flags = 0
        cdef uint32_t window = 0
        cdef int64_t now = 0
        if kind == KIND_ERROR:
            self.errors += 1
        if self.policy is not None:
            now = now_ns()
            self._count_done(r, now)
        if c.closed:
            if r.sid is not None and self.policy is not None:
                self.policy.on_complete(r.sid, now)
            return 0
        if self.policy is not None and r.sid is not None:
            window = self.policy.on_complete(r.sid, now)
            if self.policy_credits:
                flags = FLAG_HAS_CREDIT
        c.out.put_frame(kind, flags, r.frame.codec if kind == KIND_RESPONSE else CODEC_MSGPACK,
                        r.frame.call_id, r.frame.session, 0, window, NULL, 0,
                        PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self._mark_dirty(c)
        return 0

    cdef int _finish_silently(self, _Request r) except -1:
        if self.policy is not None and r.sid is not None:
            self.policy.on_complete(r.sid, now_ns())
        return 0

    cdef int _reply_error(self, _Request r, int code, str type_name, str message,
                          object tb) except -1:
        self._reply(r, KIND_ERROR, self.packer.pack([code, type_name, message, tb]))
        return 0

    cdef int _reply_reject(self, _Request r, int64_t now) except -1:
        cdef _Conn c = r.conn
        cdef uint32_t window = self.policy.on_reject(r.sid, now)
        cdef bytes body = self.packer.pack(
            [ERR_OVERLOADED, "Overloaded", "rejected by the server's overload control", None])
        self.errors += 1
        c.out.put_frame(KIND_ERROR, FLAG_HAS_CREDIT if self.policy_credits else 0,
                        CODEC_MSGPACK, r.frame.call_id, r.frame.session, 0, window, NULL, 0,
                        PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
        self._mark_dirty(c)
        return 0

    cdef int _drain_completions(self) except -1:
        cdef _Request r
        while self.completions:
            r, kind, body = self.completions.popleft()
            self.inflight.pop((r.conn.id, r.frame.call_id), None)
            if kind == 0:                      # cancelled before a worker started it
                self._reply_error(r, ERR_DEADLINE, "Cancelled", "cancelled by the client", None)
            else:
                self._reply(r, kind, body)
        return 0

    cdef int _credit_frames(self, list grants) except -1:
        cdef _Conn c
        for sid, window in grants:
            target = self.sid_conn.get(sid)
            if target is None:
                continue
            c = target[0]
            if c.closed:
                continue
            c.out.put_frame(KIND_CREDIT, FLAG_HAS_CREDIT, 0, 0, target[1], 0, window,
                            NULL, 0, NULL, 0)
            self.credit_frames += 1
            self._mark_dirty(c)
        return 0

    # -- output -----------------------------------------------------------------------

    cdef int _flush(self) except -1:
        """One send per connection for everything this pass produced."""
        cdef _Conn c
        cdef int err
        cdef Py_ssize_t sent = 0
        cdef list dirty = self.dirty
        self.dirty = []
        for c in dirty:
            c.dirty = False
            if c.closed:
                continue
            err = send_pending(c.fd, c.out, &sent)
            if err != 0 and err != EAGAIN:
                self._close_conn(c)
                continue
            self._update_interest(c)
            if not c.paused and (c.deferred or c.parser.buffered()):
                self._resume(c)
        self.bytes_out += sent
        return 0

    cdef int _resume(self, _Conn c) except -1:
        """The peer read enough of its replies: run what was held back."""
        cdef list held = c.deferred
        c.deferred = []
        self.runq.extend(held)
        self._handle_frames(c, now_ns())
        return 0

    cdef int _update_interest(self, _Conn c) except -1:
        cdef Py_ssize_t pending = c.out.end - c.out.start
        cdef bint want_write = pending > 0
        cdef bint paused = pending > self.out_limit
        cdef uint32_t ev
        if want_write != c.want_write or paused != c.paused:
            c.want_write = want_write
            c.paused = paused
            ev = (0 if paused else EPOLLIN) | (EPOLLOUT if want_write else 0)
            self._ctl(EPOLL_CTL_MOD, c.fd, ev)
        return 0

    # -- the loop ---------------------------------------------------------------------

    cdef int _poll(self, int timeout_ms, int64_t now) except -1:
        """One epoll_wait and its events: accept, read and parse, writable sockets."""
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, fd
        cdef uint32_t ev
        cdef uint64_t junk
        cdef int64_t t0 = now, t1
        cdef _Conn c
        with nogil:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, timeout_ms)
        t1 = now_ns()
        # If data was already waiting when we asked (we did not sleep), it may have waited
        # since we last looked at the sockets: that is how far behind the loop is.
        if n > 0 and t1 - t0 < 20000 and self.last_read_ns:
            self.loop_lag_ns = t0 - self.last_read_ns
        else:
            self.loop_lag_ns = 0
        self.last_read_ns = t1
        for i in range(n):
            fd = events[i].data.fd
            ev = events[i].events
            if fd == self.wakefd:
                read(self.wakefd, &junk, 8)
                continue
            if fd in self.listen_fds:
                self._accept(fd)
                continue
            c = self.conns.get(fd)
            if c is None:
                continue
            if ev & EPOLLOUT:
                self._mark_dirty(c)
            if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
                self._read(c, t1)
        return n

    cdef int _spin_poll(self, int64_t now) except -1:
        """Poll without sleeping for up to the spin budget; returns events seen."""
        cdef int64_t budget = (self.spin_ns if self.poll_mode == POLL_SPIN
                               else self.adaptive.budget)
        cdef int64_t until = now + budget
        cdef int64_t t = now
        cdef int n = 0
        if budget <= 0:
            return 0
        while t < until and not self.stopping:
            n = self._poll(0, t)
            if n > 0:
                break
            t = now_ns()
        if self.poll_mode == POLL_ADAPTIVE:
            adaptive_spun(&self.adaptive, n > 0)
        return n

    def run(self):
        """Serve until stop(): poll, read, run, flush, tick. Returns when fully stopped."""
        cdef int64_t now, batch_end, wait_ns
        cdef int n, timeout_ms
        cdef _Request r
        self.running = True
        try:
            while True:
                now = now_ns()
                if self.stopping:
                    if self._stop_step(now):
                        break
                if self.runq or self.completions:
                    timeout_ms = 0
                else:
                    wait_ns = 100000000   # wake at least every 100 ms to notice stop()
                    if self.tick_ns:
                        wait_ns = min(wait_ns, max(self.next_tick - now, 0))
                    if self.stopping:
                        wait_ns = min(wait_ns, 1000000)
                    timeout_ms = ms_ceil(wait_ns)
                n = 0
                if timeout_ms > 0 and self.poll_mode != POLL_BLOCK:
                    n = self._spin_poll(now)
                if n == 0:
                    now = now_ns()
                    n = self._poll(timeout_ms, now)
                    if n > 0 and self.poll_mode == POLL_ADAPTIVE:
                        adaptive_slept(&self.adaptive, now_ns() - now)
                self._drain_completions()
                # Run admitted requests to completion, for at most batch_ns per pass so that
                # replies go out and new requests are read (and AQM sees them) promptly.
                now = now_ns()
                batch_end = now + self.batch_ns
                while self.runq:
                    r = self.runq.popleft()
                    self._run_one(r)
                    if now_ns() >= batch_end:
                        break
                if self.tick_ns:
                    now = now_ns()
                    if now >= self.next_tick:
                        self.next_tick = now + self.tick_ns
                        grants = self.policy.on_tick(now, self._queue_delay(now))
                        if grants:
                            self._credit_frames(grants)
                if self.dirty:
                    self._flush()
        finally:
            self._shutdown()
            self.running = False

    cdef bint _stop_step(self, int64_t now) except -1:
        """While stopping: True once every admitted call has its reply (or grace ran out)."""
        cdef _Request r
        if self.listen_fds:
            for fd in list(self.listen_fds):
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
            self.listen_fds.clear()
        if not self.runq and not self.inflight and not self.completions:
            return True
        if self.stop_deadline and now >= self.stop_deadline:
            # Grace is over: every call still queued or running ends with an error now.
            while self.runq:
                r = self.runq.popleft()
                self._reply_error(r, ERR_UNAVAILABLE, "Unavailable",
                                  "the server stopped before the call finished", None)
            for r in list(self.inflight.values()):
                r.cancelled = True
                self._reply_error(r, ERR_UNAVAILABLE, "Unavailable",
                                  "the server stopped before the call finished", None)
            self.inflight.clear()
            self.completions.clear()
            return True
        return False

    def request_stop(self, double grace):
        """Ask the loop to stop (any thread): no new calls; calls in flight get ``grace``
        seconds to finish, then end with an Unavailable error."""
        self.stop_deadline = now_ns() + <int64_t>(max(grace, 0.0) * 1e9)
        if self.stop_deadline == 0:
            self.stop_deadline = 1
        self.stopping = True
        self.wake()

    cdef int _shutdown(self) except -1:
        cdef _Conn c
        cdef int64_t until = now_ns() + 200000000
        # Best effort, bounded: push out the replies already produced before closing.
        self._flush()
        # (bytes_out counts what _flush sent; a last blocking flush is not counted.)
        for c in list(self.conns.values()):
            if c.out.end > c.out.start and now_ns() < until:
                self._blocking_flush(c, until)
            self._close_conn(c)
        for fd in list(self.listen_fds):
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
        self.listen_fds.clear()
        return 0

    cdef int _blocking_flush(self, _Conn c, int64_t until) except -1:
        cdef Py_ssize_t sent = 0
        while now_ns() < until and send_pending(c.fd, c.out, &sent) == EAGAIN:
            wait_writable(c.fd, 10)
        return 0


cpdef tuple execute(_Request r, object packer, bint send_tracebacks,
                    Py_ssize_t max_message_size):
    """Decode the arguments, call the handler, encode the outcome: (frame kind, body)."""
    cdef Frame f = r.frame
    cdef int codec = f.codec
    fn = r.entry[0]
    try:
        if codec == CODEC_MSGPACK:
            args = msgpack.unpackb(f.body)
            if type(args) is not list:
                raise TypeError("arguments must be a msgpack array")
        elif codec == CODEC_RAW:
            args = None
        else:
            args = pickle.loads(f.body)
            if type(args) is not tuple:
                raise TypeError("arguments must be a pickled tuple")
    except Exception as exc:
        return KIND_ERROR, packer.pack([ERR_BAD_REQUEST, "ProtocolError",
                                        f"undecodable arguments: {exc}", None])
    try:
        if args is None:
            result = fn(f.body)
        else:
            result = fn(*args)
    except Exception as exc:
        tb = traceback.format_exc() if send_tracebacks else None
        return KIND_ERROR, packer.pack([ERR_REMOTE, type(exc).__name__, str(exc), tb])
    try:
        if codec == CODEC_MSGPACK:
            body = packer.pack(result)
        elif codec == CODEC_RAW:
            if type(result) is not bytes:
                if not isinstance(result, (bytearray, memoryview)):
                    raise TypeError(f"a raw-codec handler must return bytes, "
                                    f"not {type(result).__name__}")
                result = bytes(result)
            body = result
        else:
            body = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return KIND_ERROR, packer.pack([ERR_REMOTE, type(exc).__name__,
                                        f"result could not be encoded: {exc}", None])
    if PyBytes_GET_SIZE(body) > max_message_size:
        return KIND_ERROR, packer.pack([
            ERR_TOO_LARGE, "MessageTooLarge",
            f"response of {PyBytes_GET_SIZE(body)} bytes is over the max_message_size "
            f"limit of {max_message_size}", None])
    return KIND_RESPONSE, body


def _run_in_worker(ServerLoop loop, _Request r):
    """Body of a worker-pool task for a handler marked blocking."""
    if r.cancelled:
        loop.post_completion(r, 0, b"")
        return
    if r.deadline_ns and now_ns() >= r.deadline_ns:
        loop.deadline_skipped += 1       # safe: this runs with the GIL held throughout
        loop.post_completion(r, KIND_ERROR, msgpack.packb(
            [ERR_DEADLINE, "DeadlineExceeded", "deadline passed before the call started", None]))
        return
    # r.start_ns stays 0: a worker's time is not the I/O thread's (see _count_done).
    kind, body = execute(r, msgpack.Packer(), loop.send_tracebacks, loop.max_message_size)
    loop.post_completion(r, kind, body)

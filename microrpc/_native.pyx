# cython: language_level=3
"""The native transport: non-blocking TCP and Unix sockets driven from C.

Two drivers over the protocol core (_core.pyx):

* :class:`Channel`, the client side of one connection: sends frames and receives them in
  the calling thread (no helper thread on the request path; waking a thread on another
  core costs ~25 us on these machines, see DESIGN.md). Poll modes: ``block`` sleeps in
  poll(2); ``spin`` busy-polls the non-blocking socket for a bounded budget first (what
  Shenango/Caladan do with whole cores); ``adaptive`` spins only while replies have been
  arriving within the budget.
* :class:`ServerLoop`, the server's single I/O thread on epoll: the driver of the server
  core (``_dispatch.ServerCore``, where all of dispatch lives). Each pass reads every
  complete frame that ``recv`` returned and feeds it to the core, lets the core run its
  queue, and writes the replies of a pass with one ``send`` per connection. Workers and
  deferred replies wake it through an eventfd (:class:`Waker`).

Sockets are created and connected in Python (microrpc/transport.py: setup is not hot);
their fds are handed over here and owned from then on.

With an ``auth_key`` the server authenticates each connection before reading a frame from
it (the handshake is microrpc/auth.py's :class:`~microrpc.auth.ServerHandshake`, fed from
here): a connection that has not finished it reads only the bytes of the message it owes,
so it holds at most one tiny message, and it is closed when a message is wrong or its
``auth_timeout`` passes. The I/O thread never waits for a handshake.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
# On Linux EWOULDBLOCK == EAGAIN, so only EAGAIN is tested.
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint32_t, uint64_t

from microrpc._core cimport Frame, FrameParser, OutBuffer
from microrpc._dispatch cimport Clock, Peer, ServerCore
from microrpc import auth as _auth
from microrpc.errors import (
    AuthenticationError, ConnectionLost, DeadlineExceeded, MessageTooLarge, ProtocolError,
)


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

# poll(2) takes milliseconds, so a client waiting 500 us for a credit to expire slept a whole
# millisecond; ppoll(2) takes a timespec (pyconfig.h defines _GNU_SOURCE, which declares it).
cdef extern from *:
    """
    #include <poll.h>
    #include <time.h>
    static int microrpc_poll_ns(struct pollfd *fds, unsigned long n, long long ns) {
        struct timespec ts;
        if (ns < 0)
            return ppoll(fds, n, NULL, NULL);
        ts.tv_sec = (time_t)(ns / 1000000000LL);
        ts.tv_nsec = (long)(ns % 1000000000LL);
        return ppoll(fds, n, &ts, NULL);
    }
    """
    int poll_ns "microrpc_poll_ns" (pollfd* fds, unsigned long n, long long ns) nogil

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
DEF MIN_RECV = 4096
# A connection's reads in one server pass stop after this many bytes, so one flooding
# client cannot starve the others of the I/O thread: 1 MiB when it is the only connection
# with something to read and nothing waits to run (then it delays nobody), one recv
# otherwise. Reading 1 MiB into a fresh body (a large request is read in place, its pages
# faulted in as they fill) took 0.3-0.5 ms here, and a client beside a stream of 16 MiB
# requests saw that in its p99 (issue #10).
DEF READ_BUDGET = 1048576
DEF SHARED_READ_BUDGET = RECV_CHUNK
# And the frames of one connection fed to the core in one pass: 32-byte frames (a CANCEL, a
# PING) fill the byte budget with 32,768 of them, some 30 ms of feeding. 128: twice the 64
# requests a pipelining client keeps in flight, so a normal burst is fed in one pass; the
# rest waits in the parser (the connection is on the backlog) for the next pass.
DEF FEED_BUDGET = 128
DEF MAX_EVENTS = 256
# Room for the largest handshake message (auth.MAX_MESSAGE, checked at import).
DEF AUTH_BUF = 128

POLL_MODES = {"block": POLL_BLOCK, "spin": POLL_SPIN, "adaptive": POLL_ADAPTIVE}
assert _auth.MAX_MESSAGE <= AUTH_BUF


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


cdef int wait_writable(int fd, int64_t timeout_ns) noexcept:
    cdef pollfd pfd
    pfd.fd = fd
    pfd.events = POLLOUT
    with nogil:
        return poll_ns(&pfd, 1, timeout_ns)


cdef object _oserror(str what, int err):
    import os
    return ConnectionLost(f"{what}: {os.strerror(err)}")


# ---------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------

cdef class Channel:
    """The client end of one connection (owns the fd). Not thread-safe by itself: the Python
    client serialises writers with its lock and lets one reader at a time call recv_frames.
    The interface every channel implements is written down in microrpc/channel.py."""
    cdef int fd
    cdef int wakefd                # eventfd: interrupt() ends a blocked recv_frames early
    cdef FrameParser parser
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
        self.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.wakefd < 0:
            raise OSError(errno, "eventfd failed")
        self.parser = FrameParser(max_message_size)
        self.poll_mode = POLL_MODES[poll]
        self.spin_ns = <int64_t>(spin_us * 1000)
        adaptive_init(&self.adaptive, self.spin_ns)
        self.closed = False

    def __dealloc__(self):
        if not self.closed and self.fd >= 0:
            close(self.fd)
        if self.wakefd >= 0:
            close(self.wakefd)

    def fileno(self):
        return self.fd

    def close(self):
        if not self.closed:
            self.closed = True
            shutdown(self.fd, SHUT_RDWR)
            close(self.fd)
            self.fd = -1

    def interrupt(self):
        """Make a recv_frames blocked in another thread return now (with what it has, maybe
        nothing): a caller that cancelled a call must not sleep until its deadline."""
        cdef uint64_t one = 1
        if self.wakefd >= 0:
            write(self.wakefd, &one, 8)

    def send_from(self, OutBuffer out):
        """Send what ``out`` holds without blocking (the bytes sent leave ``out``); True
        when all went. A protocol core owns ``out``: this is how its frames reach the wire."""
        cdef Py_ssize_t sent = 0
        cdef int err
        if self.closed:
            raise ConnectionLost("connection is closed")
        err = send_pending(self.fd, out, &sent)
        self.bytes_sent += sent
        if err == 0 or err == EAGAIN:
            return err == 0
        self.close()
        raise _oserror("send failed", err)

    def wait_writable(self, int64_t deadline_ns=0):
        """Sleep until the socket has room (or the monotonic deadline; 0: up to 1 s)."""
        cdef int64_t left = deadline_ns - now_ns() if deadline_ns else 1000000000
        if not self.closed and left > 0:
            wait_writable(self.fd, left)

    def shutdown(self):
        """Wake a thread blocked reading this channel (it then sees the connection end)
        without closing the fd under it; close() later."""
        if not self.closed:
            shutdown(self.fd, SHUT_RDWR)

    cdef int _recv_some(self, bint wait, int64_t deadline) except -1:
        """One recv(2) into the parser. Returns bytes read, 0 if none are ready yet, -2 if
        interrupt() ended the wait."""
        cdef ssize_t n
        cdef int err = 0
        cdef Py_ssize_t room = RECV_CHUNK
        cdef char* dst = self.parser.reserve(&room)
        cdef int64_t spin_until, t, budget
        cdef pollfd pfd[2]
        cdef int rc
        cdef int64_t left
        cdef uint64_t junk
        cdef bint interrupted = False
        with nogil:
            n = recv(self.fd, dst, room, MSG_DONTWAIT)
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
                        n = recv(self.fd, dst, room, MSG_DONTWAIT)
                        err = errno
                        if n >= 0 or (err != EAGAIN and err != EINTR):
                            break
                        t = now_ns()
                    if self.poll_mode == POLL_ADAPTIVE:
                        adaptive_spun(&self.adaptive, n > 0)
                if n < 0 and (err == EAGAIN or err == EINTR):
                    pfd[0].fd = self.fd
                    pfd[0].events = POLLIN
                    pfd[0].revents = 0
                    pfd[1].fd = self.wakefd
                    pfd[1].events = POLLIN
                    pfd[1].revents = 0
                    t = now_ns()
                    left = deadline - t if deadline else 0
                    if deadline == 0 or left > 0:
                        rc = poll_ns(pfd, 2, left if deadline else -1)
                        if rc > 0 and pfd[1].revents:
                            read(self.wakefd, &junk, 8)
                            interrupted = True
                        if rc > 0 and pfd[0].revents:
                            n = recv(self.fd, dst, room, MSG_DONTWAIT)
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
            return -2 if interrupted else 0     # (-1 is the exception sentinel)
        self.close()
        raise _oserror("recv failed", err)

    def recv_frames(self, int64_t deadline_ns=0, bint wait=True):
        """Frames that are whole now, reading from the socket if none are buffered.

        Waits (per the poll mode) until at least one frame is whole, or until the monotonic
        ``deadline_ns`` (0: no deadline) or an :meth:`interrupt`, in which case it returns
        what it has (maybe nothing). With ``wait=False`` it only takes what the socket
        already holds. A ProtocolError or ConnectionLost leaves the channel closed.
        """
        cdef list frames = []
        cdef Frame f
        cdef int n
        if self.closed:
            raise ConnectionLost("connection is closed")
        while True:
            try:
                f = self.parser.next_frame()
                while f is not None:
                    frames.append(f)
                    f = self.parser.next_frame()
            except ProtocolError:
                self.close()                  # the stream cannot be trusted past this point
                raise
            if frames:
                return frames
            n = self._recv_some(wait, deadline_ns)
            if n <= 0:
                if n < 0 or not wait or (deadline_ns and now_ns() >= deadline_ns):
                    return frames             # interrupted, not waiting, or out of time

# ---------------------------------------------------------------------------------------
# Server side: the epoll driver of the server core (_dispatch.pyx)
# ---------------------------------------------------------------------------------------

@cython.final
cdef class MonotonicClock(Clock):
    """The server core's clock: CLOCK_MONOTONIC, read in C (the same clock as now_ns)."""

    cdef int64_t now(self) except? -1:
        return now_ns()


@cython.final
cdef class Waker:
    """An eventfd that wakes the I/O thread from epoll_wait: the server core calls
    :meth:`wake` (any thread) when a worker or a deferred reply has finished a call."""
    cdef int fd

    def __cinit__(self):
        self.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(errno, "eventfd failed")

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    def fileno(self):
        return self.fd

    def wake(self):
        cdef uint64_t one = 1
        write(self.fd, &one, 8)

    cdef void drain(self) noexcept:
        cdef uint64_t junk
        read(self.fd, &junk, 8)


@cython.final
cdef class _Conn(Peer):
    """A server connection: the core's Peer plus the socket, its parser and epoll state."""
    cdef int fd
    cdef FrameParser parser
    cdef bint want_write       # EPOLLOUT armed (the kernel buffer was full)
    cdef bint paused           # EPOLLIN disarmed: core.over_limit (TCP backpressure)
    cdef bint backlogged       # on ServerLoop.backlog: whole frames left after FEED_BUDGET
    cdef object auth           # its auth.ServerHandshake until it has authenticated, or None
    cdef int64_t auth_deadline # when it is closed if it has not (monotonic ns)


@cython.final
cdef class ServerLoop:
    """The server's I/O thread on epoll: accepts, reads into each connection's parser, feeds
    the frames to the :class:`~microrpc._dispatch.ServerCore`, lets it run its queue, and
    writes what it produced with one send per connection and pass. Everything but
    request_stop() is only touched from the thread that runs :meth:`run`."""
    cdef ServerCore core
    cdef Waker waker
    cdef int epfd
    cdef dict conns                # fd -> _Conn
    cdef list backlog              # _Conns to feed next pass (they had more than FEED_BUDGET)
    cdef set listen_fds
    cdef int poll_mode
    cdef int64_t spin_ns
    cdef Adaptive adaptive
    cdef int64_t batch_ns
    cdef int64_t last_read_ns
    cdef bytes auth_key            # None: connections carry frames from their first byte
    cdef int64_t auth_timeout_ns
    cdef object authenticating     # deque of _Conns in accept order (so in deadline order)
    cdef readonly bint running
    # statistics of the transport (the core counts calls)
    cdef readonly uint64_t bytes_in, bytes_out, connections_accepted
    cdef readonly uint64_t auth_failures   # connections closed before authenticating

    # batch_us: how long the core may run queued requests before the loop polls again.
    # Short enough that a client whose request arrives while another connection floods
    # the server waits about one flood request, not a batch of them (at 200 us, an honest
    # call's p99 beside a flood of 50 us requests was 690 us; at 50 us, 230 us: the hostile
    # bench); a poll with nothing new costs about a microsecond.
    def __cinit__(self, ServerCore core not None, Waker waker not None, str poll="block",
                  double spin_us=50.0, double batch_us=50.0, bytes auth_key=None,
                  double auth_timeout=_auth.DEFAULT_AUTH_TIMEOUT):
        if poll not in POLL_MODES:
            raise ValueError(f"poll must be one of {sorted(POLL_MODES)}, not {poll!r}")
        self.epfd = -1
        self.core = core
        self.waker = waker
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self._ctl(EPOLL_CTL_ADD, waker.fd, EPOLLIN)
        self.conns = {}
        self.backlog = []
        self.listen_fds = set()
        self.poll_mode = POLL_MODES[poll]
        self.spin_ns = <int64_t>(spin_us * 1000)
        adaptive_init(&self.adaptive, self.spin_ns)
        self.batch_ns = <int64_t>(batch_us * 1000)
        self.auth_key = _auth.check_key(auth_key)
        if not auth_timeout > 0:
            raise ValueError("auth_timeout must be positive")
        self.auth_timeout_ns = <int64_t>(auth_timeout * 1e9)
        from collections import deque
        self.authenticating = deque()
        self.running = False

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)

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

    def request_stop(self, double grace):
        """Ask the loop to stop (any thread): no new calls; calls in flight get ``grace``
        seconds to finish, then end with an Unavailable error."""
        self.core.request_stop(now_ns(), <int64_t>(max(grace, 0.0) * 1e9))
        self.waker.wake()

    # -- connections ------------------------------------------------------------------

    cdef int _accept(self, int lfd) except -1:
        cdef int fd
        cdef _Conn c
        cdef str label
        import socket
        while True:
            with nogil:
                fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                return 0
            c = _Conn.__new__(_Conn)
            c.fd = fd
            c.parser = FrameParser(self.core.max_message_size)
            try:
                s = socket.socket(fileno=fd)
                try:
                    if s.family in (socket.AF_INET, socket.AF_INET6):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    label = _peer_label(s.family, s.getpeername())
                finally:
                    s.detach()
            except OSError:
                label = "?"
            if not self.core.add_peer(c, label):
                close(fd)                    # at max_connections: the client sees it closed
                continue
            self.conns[fd] = c
            self.connections_accepted += 1
            if self.auth_key is not None:
                c.auth = _auth.ServerHandshake(self.auth_key)
                c.auth_deadline = now_ns() + self.auth_timeout_ns
                self.authenticating.append(c)
            self._ctl(EPOLL_CTL_ADD, fd, EPOLLIN)

    cdef int _close_conn(self, _Conn c, int64_t now) except -1:
        if c.closed:
            return 0
        self.core.close_peer(c, now)
        self.conns.pop(c.fd, None)
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.fd, NULL)
        close(c.fd)
        return 0

    # -- authentication (only with an auth_key) ---------------------------------------

    cdef int _authenticate(self, _Conn c, int64_t now) except -1:
        """Read what the handshake waits for, never more (frames behind the client's proof
        stay in the socket for _read), and answer it. 1 while it goes on or failed (the
        connection is then closed), 0 once the connection is authenticated."""
        cdef char buf[AUTH_BUF]
        cdef ssize_t n
        cdef int err = 0
        cdef Py_ssize_t want
        hs = c.auth
        while True:
            want = hs.want()
            with nogil:
                n = recv(c.fd, buf, want, MSG_DONTWAIT)
                err = errno
            if n > 0:
                self.bytes_in += n
                try:
                    reply = hs.feed(buf[:n])
                except AuthenticationError:
                    self._auth_failed(c, now, hs.farewell)
                    return 1
                if reply and not self._send_small(c, reply):
                    self._auth_failed(c, now, b"")
                    return 1
                if hs.done:
                    c.auth = None
                    return 0
                continue
            if n < 0 and err == EINTR:
                continue
            if n < 0 and err == EAGAIN:
                return 1
            self._auth_failed(c, now, b"")       # closed (n == 0) or failed mid-handshake
            return 1

    cdef bint _send_small(self, _Conn c, bytes data) except -1:
        """Send a handshake message at once: it is tiny and the connection's send buffer is
        empty (no frame goes out before the handshake ends), so all of it fits; a send that
        does not take all of it means a broken connection."""
        cdef ssize_t n
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef const char* p = PyBytes_AS_STRING(data)
        with nogil:
            n = send(c.fd, p, size, MSG_DONTWAIT | MSG_NOSIGNAL)
        if n > 0:
            self.bytes_out += n
        return n == size

    cdef int _auth_failed(self, _Conn c, int64_t now, bytes farewell) except -1:
        if c.closed:
            return 0
        self.auth_failures += 1
        if farewell:
            self._send_small(c, farewell)
        c.auth = None
        self._close_conn(c, now)
        return 0

    cdef int64_t _expire_auth(self, int64_t now) except -1:
        """Close the connections whose handshake time is up; returns the next such
        deadline (0: none). They are in deadline order, so this looks at the head only."""
        cdef _Conn c
        dq = self.authenticating
        while dq:
            c = dq[0]
            if c.closed or c.auth is None:
                dq.popleft()
            elif c.auth_deadline <= now:
                dq.popleft()
                self._auth_failed(c, now, b"")
            else:
                return c.auth_deadline
        return 0

    cdef int _read(self, _Conn c, int64_t now, Py_ssize_t budget) except -1:
        """Drain the socket (up to ``budget`` bytes) and feed whole frames (up to the feed
        budget). A backlogged connection is not read: its parser already holds frames, and
        the parser's bytes stay bounded by about READ_BUDGET plus one frame."""
        cdef ssize_t n
        cdef int err = 0
        cdef char* dst
        cdef Py_ssize_t total = 0, room
        if c.backlogged:
            return 0
        if c.auth is not None and self._authenticate(c, now):
            return 0
        while total < budget:
            # Read into the room the parser has (a new connection's buffer is small, and
            # grows only when its traffic fills it), at least a page, at most RECV_CHUNK.
            room = c.parser.cap - (c.parser.end - c.parser.start)
            if room < MIN_RECV:
                room = MIN_RECV
            elif room > RECV_CHUNK:
                room = RECV_CHUNK
            dst = c.parser.reserve(&room)
            with nogil:
                n = recv(c.fd, dst, room, MSG_DONTWAIT)
                err = errno
            if n > 0:
                c.parser.commit(n)
                total += n
                self.bytes_in += n
                if n < room:
                    break
                continue
            if n == 0:
                self._feed(c, now)
                self._close_conn(c, now)
                return 0
            if err == EINTR:
                continue
            if err == EAGAIN:
                break
            self._close_conn(c, now)
            return 0
        self._feed(c, now)
        return 0

    cdef int _feed(self, _Conn c, int64_t now) except -1:
        """Hand the parser's whole frames to the core: at most FEED_BUDGET (the connection
        goes on the backlog for the rest), and none once the core says it is over a limit
        (then stop reading it; the core marks it dirty when it may go on, and _flush feeds
        the rest)."""
        cdef ServerCore core = self.core
        cdef Frame f
        cdef int fed = 0
        while not c.closed:
            if core.over_limit(c):
                self._update_interest(c)
                return 0
            if fed == FEED_BUDGET:
                if not c.backlogged:
                    c.backlogged = True
                    self.backlog.append(c)
                return 0
            fed += 1
            try:
                f = c.parser.next_frame()
            except ProtocolError:
                # Lengths can no longer be trusted: drop this peer, keep serving the rest.
                core.protocol_error(c)
                if self.auth_key is None and c.parser.end - c.parser.start >= 2 and \
                        _auth.is_hello(c.parser.buf[c.parser.start:c.parser.start + 2]):
                    # A client with a key, and this server has none: tell it so.
                    self._send_small(c, _auth.NO_AUTH_HERE)
                self._close_conn(c, now)
                return 0
            if f is None:
                return 0
            if not core.feed(c, f, now):
                self._close_conn(c, now)
                return 0
        return 0

    # -- output -----------------------------------------------------------------------

    cdef int _flush(self, int64_t now) except -1:
        """One send per connection for everything the core produced since the last flush."""
        cdef _Conn c
        cdef int err
        cdef Py_ssize_t sent = 0
        for c in self.core.take_dirty():
            if c.closed:
                continue
            err = send_pending(c.fd, c.out, &sent)
            if err != 0 and err != EAGAIN:
                self._close_conn(c, now)
                continue
            # Requests held back while the peer did not read its replies run again once
            # it has; and a peer the core paused at a bound is read again when it may.
            self.core.resume(c)
            self._update_interest(c)
            if not c.paused and not c.backlogged and c.parser.buffered():
                self._feed(c, now)
        self.bytes_out += sent
        return 0

    cdef int _update_interest(self, _Conn c) except -1:
        cdef bint want_write = c.out.end > c.out.start
        cdef bint paused = self.core.over_limit(c)
        cdef uint32_t ev
        if want_write != c.want_write or paused != c.paused:
            c.want_write = want_write
            c.paused = paused
            ev = (0 if paused else EPOLLIN) | (EPOLLOUT if want_write else 0)
            self._ctl(EPOLL_CTL_MOD, c.fd, ev)
        return 0

    # -- the loop ---------------------------------------------------------------------

    cdef int _poll(self, int timeout_ms, int64_t now) except -1:
        """One epoll_wait and its events: accept, read and feed, writable sockets."""
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, fd
        cdef uint32_t ev
        cdef int64_t t0 = now, t1
        cdef _Conn c
        with nogil:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, timeout_ms)
        if n < 0:
            # A signal landed on this thread (any thread may take a process's signal; a
            # debugger's attach does the same): nothing happened, the loop polls again.
            # Returned as -1, it would be read as a raised exception that was never set
            # (the serving thread died with SystemError).
            if errno == EINTR:
                return 0
            raise OSError(errno, "epoll_wait failed")
        t1 = now_ns()
        # If data was already waiting when we asked (we did not sleep), it may have waited
        # since we last looked at the sockets: that is how far behind the loop is, and the
        # core adds it to the congestion signal.
        if n > 0 and t1 - t0 < 20000 and self.last_read_ns:
            self.core.loop_lag_ns = t0 - self.last_read_ns
        else:
            self.core.loop_lag_ns = 0
        self.last_read_ns = t1
        for i in range(n):
            fd = events[i].data.fd
            ev = events[i].events
            if fd == self.waker.fd:
                self.waker.drain()
                continue
            if fd in self.listen_fds:
                self._accept(fd)
                continue
            c = self.conns.get(fd)
            if c is None:
                continue
            if ev & (EPOLLERR | EPOLLHUP):
                # Reset or shut both ways: no reply can reach it. Drop its work unread
                # rather than read and run it (epoll reports these even while paused).
                if c.auth is not None:
                    self._auth_failed(c, t1, b"")
                else:
                    self._close_conn(c, t1)
                continue
            if ev & EPOLLOUT:
                self.core._mark_dirty(c)
            if ev & EPOLLIN:
                self._read(c, t1, READ_BUDGET if n == 1 and not self.core.has_work()
                           else SHARED_READ_BUDGET)
        return n

    cdef int _feed_backlog(self, int64_t now) except -1:
        """Feed each connection that had frames left after its last feed budget."""
        cdef list todo = self.backlog
        cdef _Conn c
        self.backlog = []
        for c in todo:
            c.backlogged = False
            if not c.closed and not c.paused:
                self._feed(c, now)
        return 0

    cdef int _spin_poll(self, int64_t now) except -1:
        """Poll without sleeping for up to the spin budget; returns events seen."""
        cdef int64_t budget = (self.spin_ns if self.poll_mode == POLL_SPIN
                               else self.adaptive.budget)
        cdef int64_t until = now + budget
        cdef int64_t t = now
        cdef int n = 0
        if budget <= 0:
            return 0
        while t < until and not self.core.stopping:
            n = self._poll(0, t)
            if n > 0:
                break
            t = now_ns()
        if self.poll_mode == POLL_ADAPTIVE:
            adaptive_spun(&self.adaptive, n > 0)
        return n

    def run(self):
        """Serve until stop: poll, read, run, tick, flush. Returns when fully stopped."""
        cdef ServerCore core = self.core
        cdef int64_t now, wait_ns, next_tick, next_auth
        cdef int n, timeout_ms
        self.running = True
        try:
            while True:
                now = now_ns()
                if core.stopping:
                    self._unlisten()
                    if core.stop_step(now):
                        break
                if self.backlog:
                    self._feed_backlog(now)
                next_auth = 0
                if self.auth_key is not None and self.authenticating:
                    next_auth = self._expire_auth(now)
                if core.has_work() or self.backlog:
                    timeout_ms = 0
                else:
                    wait_ns = 100000000   # wake at least every 100 ms to notice stop()
                    if core.tick_ns:
                        wait_ns = min(wait_ns, max(core.next_tick - now, 0))
                    if core.stopping:
                        wait_ns = min(wait_ns, 1000000)
                    if next_auth:
                        wait_ns = min(wait_ns, max(next_auth - now, 0))
                    timeout_ms = ms_ceil(wait_ns)
                n = 0
                if timeout_ms > 0 and self.poll_mode != POLL_BLOCK:
                    n = self._spin_poll(now)
                if n == 0:
                    now = now_ns()
                    n = self._poll(timeout_ms, now)
                    if n > 0 and self.poll_mode == POLL_ADAPTIVE:
                        adaptive_slept(&self.adaptive, now_ns() - now)
                now = now_ns()
                core.drain_completions(now)
                core.run(now, self.batch_ns)
                if core.tick_ns:
                    core.tick(now_ns())
                if core.dirty:
                    self._flush(now_ns())
        finally:
            self._shutdown()
            self.running = False

    cdef int _unlisten(self) except -1:
        for fd in self.listen_fds:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
        self.listen_fds.clear()
        return 0

    cdef int _shutdown(self) except -1:
        cdef _Conn c
        cdef int64_t until = now_ns() + 200000000
        # Best effort, bounded: push out the replies already produced before closing.
        self._flush(now_ns())
        # (bytes_out counts what _flush sent; a last blocking flush is not counted.)
        for c in list(self.conns.values()):
            if c.out.end > c.out.start and now_ns() < until:
                self._blocking_flush(c, until)
            self._close_conn(c, now_ns())
        self._unlisten()
        return 0

    cdef int _blocking_flush(self, _Conn c, int64_t until) except -1:
        cdef Py_ssize_t sent = 0
        while now_ns() < until and send_pending(c.fd, c.out, &sent) == EAGAIN:
            wait_writable(c.fd, 10000000)
        return 0

    # -- statistics -------------------------------------------------------------------

    def connection_count(self):
        return len(self.conns)


def _peer_label(int family, name):
    """A connection's name in the server's address syntax: ``tcp://host:port``, or
    ``unix://`` and the client's path (empty for the usual unbound client socket)."""
    import socket
    if family == socket.AF_INET:
        return f"tcp://{name[0]}:{name[1]}"
    if family == socket.AF_INET6:
        return f"tcp://[{name[0]}]:{name[1]}"
    if isinstance(name, bytes):                   # an abstract-namespace address
        name = name.decode("utf-8", "replace")
    return f"unix://{name}"

"""ferroloop's benchmark suite: ``python -m ferroloop bench``.

Modules:

* ``registry``    -- the :class:`~.registry.Workload`, :class:`~.registry.Metric` and
  :class:`~.registry.Measurement` types and the list of workload families;
* ``micro``       -- loop mechanics in one process (call_soon, timers, tasks, futures, queues,
  sleep(0));
* ``spawn``       -- subprocess spawning (``create_subprocess_exec``) in one process;
* ``tcp_echo``    -- TCP echo with a ``Protocol``, streams and a ``BufferedProtocol``;
* ``sock_echo``   -- TCP echo with ``loop.sock_recv``/``sock_sendall``;
* ``http_keepalive`` -- HTTP/1.1 keep-alive (``httptools``) under ``wrk``;
* ``udp_echo``    -- UDP echo with ``create_datagram_endpoint``;
* ``echo``        -- what the network families share: server processes, the fixed load
  generator, content verification, the measured window, self-tests;
* ``floor``       -- building and starting the plain Rust epoll server (``floor_server/``);
* ``contestants`` -- the loops compared and how a child process creates one;
* ``runner``      -- interleaved rounds, re-runs of disturbed measurements, medians and ratios;
* ``report``      -- the markdown table; ``cli`` -- the command line;
* ``procstat``    -- CPU time and interference from /proc; ``subproc``/``_child`` -- child
  processes.

Importing this package does not import ferroloop's extension module.
"""

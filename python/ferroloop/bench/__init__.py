"""ferroloop's benchmark suite: ``python -m ferroloop bench``.

Modules:

* ``registry``    -- the :class:`~.registry.Workload`, :class:`~.registry.Metric` and
  :class:`~.registry.Measurement` types and the list of workload families;
* ``micro``       -- loop mechanics in one process (call_soon, timers, tasks, futures, queues,
  sleep(0));
* ``sock_echo``   -- TCP echo with ``loop.sock_recv``/``sock_sendall`` against a fixed client;
* ``contestants`` -- the loops compared and how a child process creates one;
* ``runner``      -- interleaved rounds, re-runs of disturbed measurements, medians and ratios;
* ``report``      -- the markdown table; ``cli`` -- the command line;
* ``procstat``    -- CPU time and interference from /proc; ``subproc``/``_child`` -- child
  processes.

Importing this package does not import ferroloop's extension module.
"""

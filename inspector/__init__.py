"""The inspector: ``python -m shm inspect`` draws a running server's tables.

``shm.snapshot`` copies the tables out of shared memory, read-only; this
package only shows that copy:

* ``views``: the five sections (client, message and group tables, semaphores,
  IPC objects) as lines of styled cells;
* ``screen``: those lines, aligned into tables and cut to the terminal;
* ``json_view``: the same snapshot as JSON, for scripts;
* ``cli``: one snapshot or a live redraw (``--watch``), and colour choice;
* ``trace_view`` and ``trace_cli``: ``python -m shm trace``, the trace table
  (``shm.trace_reader``) drawn as a sequence diagram, once or followed.
"""

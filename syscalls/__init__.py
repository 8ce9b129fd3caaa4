"""What the programs ask of the operating system that is not shared memory.

``faults`` wraps the failure-prone system calls once, so that a test can make
the Nth one fail (fork, accept, send, shmget, semop and the spool's calls);
``processes`` answers questions about processes from ``kill(pid, 0)`` and
``/proc``; ``programs`` is what every entry point does alike (the commands
its hints name, ``--port``, a closed stdout).  ``shm``, ``server``,
``client``, ``inspector`` and ``lessons`` use them, so they sit below all of
them and import no other package of the project.
"""

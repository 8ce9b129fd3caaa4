"""What the programs ask of the operating system that is not shared memory.

``faults`` wraps the failure-prone system calls once, so that a test can make
the Nth one fail (fork, accept, send, shmget, semop and the spool's calls);
``processes`` answers questions about processes from ``kill(pid, 0)`` and
``/proc``.  Both ``shm`` and ``server`` use them, so they sit below both and
import no other package of the project.
"""

"""The engines: what moves a job's bytes between this machine and the repository.

- ``upload.py``, ``download.py``: one engine per direction; plan parts or ranges,
  move their bytes, checkpoint them once the other side holds them;
- ``context.py``: what an engine gets for one job (``JobContext``), and its retry loop;
- ``retry.py``: the retry policy: backoff, ``Retry-After``, the deadline, reasons;
- ``accounting.py``: the one place a job's bytes are paced, counted and reported;
- ``bandwidth.py``: the daemon's fair links, which every job's bytes are paced by;
- ``progress.py``: a job's counts, rate and throttled ``job.progress`` events;
- ``turns.py``: part bodies in order for the repository's own part endpoint;
- ``repository.py``: what the engines need of the repository (``dataeraid.remote.Remote``
  over HTTP; an in-memory one in the tests).
"""

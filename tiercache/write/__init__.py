"""The write tier: writes acknowledged once durable on local disk, uploaded in the background.

A file written through ``tiercache`` is staged on local disk (``[write] path``): written,
fsynced, its directory fsynced and an entry committed to the write journal (LMDB) before
``close()`` returns. From then on it is readable and listed through the cache on this node,
and the engine's uploader carries it to the origin: multipart with concurrent parts,
resumed part by part after any crash, verified against the origin's stored checksum, in
program order, and only then released into the cache tiers as an ordinary entry.

Modules, each one job:

* ``settings``: the ``[write]`` config section;
* ``journal``: the LMDB journal of operations, parts and upload ids (shared by every process);
* ``staging``: the staging directory, its quota and back-pressure, orphan sweeping;
* ``files``: the file object ``fs.open(path, "wb")`` returns;
* ``fsops``: the filesystem's write methods (open, pipe, put, rm, mv, touch, sync, ...);
* ``order``: which journal operations may be sent to the origin now (program order);
* ``s3upload`` / ``generic``: talking to the origin (S3 multipart; any other fsspec origin);
* ``uploader``: the engine component that runs uploads in the background.
"""

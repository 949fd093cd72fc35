"""The run machinery every job shares, beneath the algorithm: the job lifecycle (job.py), the local process
launcher (launch.py), checkpoints read as data (checkpoint.py), the device (device.py), seeded randomness
(seeding.py) and the record of image files a run skipped (unreadable.py). A student reading MoCo can stop
at the package's top level; this is how a run is kept safe."""

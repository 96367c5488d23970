"""Host-side view of guest kernel memory: one reader for the live monitor
and for snapshots. ``memory`` maps the VM's RAM files, ``program`` opens a
drgn Program over them, ``layout`` resolves addresses and offsets once, and
``reader``/``sampler`` read raw bytes on the hot path."""

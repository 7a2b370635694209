# msgpack encoding with one reused Packer (see _pack.pyx): cimported by the per-call paths
# that encode on any thread (the client core, proclets' call bytes).
cdef bytes pack(object value)

# The bytes of a proclet call and its reply (see _wire.pyx): cimported by both sides'
# per-call paths, which call them without a Python call.
cpdef bytes encode_call(object pid, object method, object args, object kwargs, object lease,
                        object seq, object ack)
cpdef tuple decode_call(bytes body)
cpdef bytes encode_reply(int code, object value)
cpdef tuple decode_reply(object body)

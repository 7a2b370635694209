# Argument tags of the record encoding (see nanolog/format.py): the writer (_core.pyx) and
# the decoder (_decode.pyx) cimport them from here so the two can never disagree.
cdef enum:
    T_NONE = 0
    T_FALSE = 1
    T_TRUE = 2
    T_INT = 3
    T_FLOAT = 4
    T_STR = 5
    T_BYTES = 6
    T_BIGINT = 7
    T_TEXT = 8
    T_SURR = 9

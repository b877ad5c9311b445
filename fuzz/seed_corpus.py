import struct, zlib, sys
def record(ts, key, headers, body):
    out = struct.pack('<q', ts)
    out += struct.pack('<I', 0xFFFFFFFF) if key is None else struct.pack('<I', len(key)) + key
    out += struct.pack('<I', len(headers))
    for n, v in headers:
        out += struct.pack('<I', len(n)) + n + struct.pack('<I', len(v)) + v
    out += struct.pack('<I', len(body)) + body
    return struct.pack('<I', len(out)) + out
def batch(base, recs):
    payload = b''.join(record(*r) for r in recs)
    length = 48 + len(payload)
    ts = [r[0] for r in recs]
    head = b'PTKB' + bytes([1, 0]) + b'\0\0' + struct.pack('<I', length)
    rest = struct.pack('<QIIqq', base, len(recs), 0, ts[0], max(ts))
    crc = zlib.crc32(head + rest + payload) & 0xffffffff
    return head + struct.pack('<I', crc) + rest + payload
b1 = batch(0, [(5, b'k', [(b'h', b'v')], b'hello'), (3, None, [], b'')])
b2 = batch(2, [(9, b'', [(b'a', b'1'), (b'b', b'2')], b'x' * 100)])
open('corpus/batch_decode/one', 'wb').write(b1)
open('corpus/batch_decode/two', 'wb').write(b2)
open('corpus/segment_recovery/torn', 'wb').write(batch(1, [(7, None, [], b'abc')]) + b2[:30])
open('corpus/segment_recovery/two', 'wb').write(batch(1, [(7, None, [], b'abc')]) + batch(2, [(8, b'q', [], b'zz')]))
print(len(b1), len(b2))

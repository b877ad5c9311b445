"""Cost of creating a stream beside many others: EXISTING streams with names NAMELEN bytes long are
created (pipelined), then after SLEEP seconds 200 XADDs to new keys run one at a time and their
latency is printed. Usage: python3 benches/create_cost.py PORT EXISTING NAMELEN [SLEEP]"""
import socket, time, sys, statistics
port=int(sys.argv[1]); existing=int(sys.argv[2]); namelen=int(sys.argv[3])
def cmd(*args):
    out=b'*%d\r\n'%len(args)
    for a in args:
        a=a if isinstance(a,bytes) else str(a).encode()
        out+=b'$%d\r\n%s\r\n'%(len(a),a)
    return out
s=socket.create_connection(('127.0.0.1',port))
def call(c):
    s.sendall(c); d=b''
    while not d.endswith(b'\r\n'): d+=s.recv(65536)
    return d
# create existing streams in pipelined chunks
batch=1000
for start in range(0,existing,batch):
    n=min(batch,existing-start)
    buf=b''.join(cmd('XADD',(b'%010d'%i).ljust(namelen,b'x'),'*','f','v') for i in range(start,start+n))
    s.sendall(buf); got=0
    while got<n:
        d=s.recv(1<<20); got+=d.count(b'\r\n')
time.sleep(float(sys.argv[4]) if len(sys.argv)>4 else 0)
lat=[]
for i in range(200):
    t=time.perf_counter(); call(cmd('XADD',b'new:%d'%i+b'y'*max(0,namelen-10),'*','f','v')); lat.append((time.perf_counter()-t)*1000)
lat.sort()
print(f"existing={existing} namelen={namelen}: create p50 {lat[100]:.2f} ms p99 {lat[197]:.2f} ms")

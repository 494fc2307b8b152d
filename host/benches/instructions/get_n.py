# One keep-alive connection sending N GETs with a key; each must be 200.
# get_n.py PORT KEY PATH N
import http.client, sys, json
port, key, path, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", path, headers={"Authorization": "Bearer " + key})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status

"""Fetch the uv binary of one version from its PyPI wheel: fetch_uv.py VERSION TARGET.

The wheel is chosen for this machine (manylinux, x86_64 or aarch64), its sha256 checked
against the digest PyPI lists, and only ``uv-<version>.data/scripts/uv`` is extracted.
"""

import hashlib
import io
import json
import os
import platform
import sys
import urllib.parse
import urllib.request
import zipfile

version, target = sys.argv[1], sys.argv[2]
machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[
    platform.machine().lower()
]
index = os.environ.get("PYPI_JSON", "https://pypi.org/pypi")
index_url = f"{index}/uv/json"
with urllib.request.urlopen(index_url, timeout=60) as r:
    files = json.load(r)["releases"].get(version) or []
wheels = [
    f
    for f in files
    if f["filename"].endswith(".whl")
    and "manylinux" in f["filename"]
    and f"_{machine}" in f["filename"]
    and "musllinux" not in f["filename"]
]
if not wheels:
    sys.exit(f"no manylinux {machine} wheel of uv {version}")
wheel = wheels[0]
# (a mirror may list the files relative to the index page)
with urllib.request.urlopen(urllib.parse.urljoin(index_url, wheel["url"]), timeout=300) as r:
    data = r.read()
if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
    sys.exit(f"{wheel['filename']}: sha256 does not match the index")
with zipfile.ZipFile(io.BytesIO(data)) as z:
    with open(target, "wb") as out:
        out.write(z.read(f"uv-{version}.data/scripts/uv"))
os.chmod(target, 0o755)
print(f"uv {version} from {wheel['filename']}")

"""The adapter from docs/integrations/wechatpy.md on wechatpy 1.8.18: a business call whose
token WeChat rejects (40001) hands it back with `wxtoken get --reject`, which fetches once
and republishes the key, and the SDK's own retry reads the new one. The SDK never fetches.

Usage: python wechatpy_reject.py API_BASE REDIS_PORT APPID
OA_SECRET and WXTOKEN_BIN (the binary under test), plus wxtoken's own WXTOKEN_DB and
WXTOKEN_API_BASE, come from the environment. Prints {"before": TOKEN, "after": TOKEN, "menu": ...}.
"""

import json
import os
import subprocess
import sys

import redis
from wechatpy import WeChatClient
from wechatpy.session.redisstorage import RedisStorage

base, port, appid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
WXTOKEN = os.environ.get("WXTOKEN_BIN", "wxtoken")


# --- the adapter, as in docs/integrations/wechatpy.md ---
class WxtokenClient(WeChatClient):
    """Reads the token wxtoken publishes and never fetches one itself."""

    def fetch_access_token(self):
        # wechatpy calls this when the key is missing, and (auto_retry) after 40001, 40014
        # or 42001, then re-reads the session and retries the call.
        current = self.session.get(self.access_token_key)
        if current is None:
            raise RuntimeError(
                "no token published by wxtoken for %s: check `wxtoken status`" % self.appid
            )
        # Hand the rejected token back: wxtoken fetches a new one (once, however many
        # processes ask) and republishes the key before it exits.
        subprocess.run(
            [WXTOKEN, "get", "--appid", self.appid, "--reject", "-"],
            input=current + "\n",
            text=True,
            stdout=subprocess.DEVNULL,
            check=True,
        )
# --- end of the adapter ---


class TestClient(WxtokenClient):
    API_BASE_URL = base + "/cgi-bin/"


client = TestClient(
    appid,
    os.environ["OA_SECRET"],
    session=RedisStorage(redis.Redis(host="127.0.0.1", port=port)),
)
before = client.access_token
menu = client.menu.get()
print(json.dumps({"before": before, "after": client.access_token, "menu": menu}))

"""wechatpy (PyPI 1.8.18) reading what wxtoken published to Redis, as an application would.

Usage: python wechatpy_client.py API_BASE REDIS_PORT APPID CORPID
Secrets come from the environment (OA_SECRET, APP_SECRET), never from argv.

The clients are configured the way docs/integrations/wechatpy.md says: a RedisStorage with
the default prefix and auto_retry=False. The only change from stock clients is where they
would fetch a token: the stand-in instead of WeChat, so that the test sees any fetch they
make (the test asserts there is none). Prints one JSON object with what each call returned.
"""

import json
import os
import sys

import redis
from wechatpy import WeChatClient
from wechatpy.enterprise import WeChatClient as WorkClient
from wechatpy.session.redisstorage import RedisStorage

base, port, appid, corpid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
storage = RedisStorage(redis.Redis(host="127.0.0.1", port=port, db=0))


class OfficialAccount(WeChatClient):
    API_BASE_URL = base + "/cgi-bin/"

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=base + "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )


class WeCom(WorkClient):
    API_BASE_URL = base + "/cgi-bin/"

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=base + "/cgi-bin/gettoken",
            params={"corpid": self.corp_id, "corpsecret": self.secret},
        )


oa = OfficialAccount(appid, os.environ["OA_SECRET"], session=storage, auto_retry=False)
work = WeCom(corpid, os.environ["APP_SECRET"], session=storage, auto_retry=False)
print(
    json.dumps(
        {
            "oa_menu": oa.menu.get(),
            "oa_token": oa.access_token,
            "oa_jsapi_ticket": oa.jsapi.get_jsapi_ticket(),
            "work_user": work.user.get("zhangsan"),
            "work_token": work.access_token,
            "work_jsapi_ticket": work.jsapi.get_jsapi_ticket(),
            "work_agent_ticket": work.jsapi.get_agent_jsapi_ticket(),
        }
    )
)

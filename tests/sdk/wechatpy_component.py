"""wechatpy (PyPI 1.8.18) WeChatComponent reading what wxtoken published to Redis.

Usage: python wechatpy_component.py API_BASE REDIS_PORT DB COMPONENT_APPID AUTHORIZER_APPID MODE
The component secret comes from the environment (COMPONENT_SECRET), never from argv.

MODE:
- by_appid: `component.get_client_by_appid(AUTHORIZER_APPID)`, wechatpy's own way, which
  asserts that the authorizer's refresh token is in the session (a sink added with
  --include-refresh-tokens puts it there). Prints {"assert": true} when that assert fails.
- direct: `WeChatComponentClient(AUTHORIZER_APPID, component, session=...)`, the adapter of
  docs/integrations/wechatpy.md, which needs no refresh token in Redis.

The only change from stock wechatpy is where it would send requests: the stand-in instead of
WeChat (API_BASE_URL of the component and of its authorizer clients), so that the test sees
every token fetch it would make (the test asserts there is none). auto_retry=False as the
guide says. Prints one JSON object.
"""

import json
import os
import sys

import redis
from wechatpy.client import WeChatComponentClient
from wechatpy.component import WeChatComponent
from wechatpy.session.redisstorage import RedisStorage

base, port, db, component_appid, appid, mode = sys.argv[1:7]
storage = RedisStorage(redis.Redis(host="127.0.0.1", port=int(port), db=int(db)))

# Where wechatpy sends its requests: the component's own calls (api_component_token,
# api_authorizer_token) and the authorizer clients' business calls.
WeChatComponent.API_BASE_URL = base + "/cgi-bin"
WeChatComponentClient.API_BASE_URL = base + "/cgi-bin/"

# The message Token and EncodingAESKey only matter for pushes, which this script does not
# receive; WeChatCrypto needs a well-formed 43-character key.
component = WeChatComponent(
    component_appid,
    os.environ["COMPONENT_SECRET"],
    "message-token",
    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    session=storage,
    auto_retry=False,
)

if mode == "by_appid":
    try:
        client = component.get_client_by_appid(appid)
    except AssertionError:
        print(json.dumps({"assert": True}))
        sys.exit(0)
elif mode == "direct":
    client = WeChatComponentClient(appid, component, session=storage)
else:
    sys.exit("unknown mode " + mode)

print(
    json.dumps(
        {
            "assert": False,
            "component_token": component.access_token,
            "authorizer_token": client.access_token,
            "menu": client.menu.get(),
        }
    )
)

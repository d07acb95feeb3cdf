"""wechatpy (PyPI 1.8.18) on either side of a push: WXBizMsgCrypt as an SDK does it.

The message Token and the EncodingAESKey come from the environment (PUSH_TOKEN,
PUSH_AES_KEY), never from argv. PLATFORM is `op` (Open Platform: wechatpy.crypto, the push
body is <xml><AppId/><Encrypt/></xml>) or `wecom` (wechatpy.enterprise.crypto, the body is
<xml><ToUserName/><Encrypt/><AgentID/></xml>). ID is the receiveid: the component appid, the
suite_id, or the provider corpid for the WeCom URL-verification GET.

  encrypt PLATFORM ID [TIMESTAMP NONCE] < plaintext.xml
      What WeChat would push: prints one JSON object {msg_signature, timestamp, nonce,
      encrypt, body}. `encrypt` doubles as a WeCom GET's echostr (its signature covers it
      the same way). PUSH_RANDOM (16 ASCII characters) fixes wechatpy's random prefix, for
      a reproducible vector.
  check PLATFORM ID MSG_SIGNATURE TIMESTAMP NONCE ECHOSTR
      The WeCom URL verification: check_signature(...) and print the plaintext it returns
      (nothing else, no newline). Exit 1 on a bad signature or receiveid.
  decrypt PLATFORM ID MSG_SIGNATURE TIMESTAMP NONCE < body.xml
      decrypt_message(...) of something wxtoken encrypted (a body with an <Encrypt>
      element); prints the plaintext (no newline). Exit 1 on a bad signature or receiveid.
"""

import json
import os
import re
import sys

import wechatpy.crypto as op_crypto
import wechatpy.enterprise.crypto as wecom_crypto
from wechatpy.crypto.base import BasePrpCrypto
from wechatpy.exceptions import InvalidSignatureException, InvalidAppIdException
from wechatpy.enterprise.exceptions import InvalidCorpIdException


def crypto_for(platform, receiveid):
    token, key = os.environ["PUSH_TOKEN"], os.environ["PUSH_AES_KEY"]
    if platform == "op":
        return op_crypto.WeChatCrypto(token, key, receiveid)
    if platform == "wecom":
        return wecom_crypto.WeChatCrypto(token, key, receiveid)
    sys.exit("platform must be op or wecom, not " + platform)


def tag(reply, name):
    found = re.search(r"<%s>(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?</%s>" % (name, name), reply, re.S)
    return found.group(1)


def encrypt(platform, receiveid, args):
    fixed = os.environ.get("PUSH_RANDOM")
    if fixed:
        BasePrpCrypto.get_random_string = lambda self: fixed
    timestamp = args[0] if args else "1700000000"
    nonce = args[1] if len(args) > 1 else "1320562132"
    plaintext = sys.stdin.buffer.read().decode("utf-8")
    # encrypt_message gives the reply form (Encrypt, MsgSignature, TimeStamp, Nonce); a push
    # carries the same Encrypt and signature, in the query and a body of its own.
    reply = crypto_for(platform, receiveid).encrypt_message(plaintext, nonce, timestamp)
    enc, sig = tag(reply, "Encrypt"), tag(reply, "MsgSignature")
    if platform == "op":
        body = "<xml><AppId><![CDATA[%s]]></AppId><Encrypt><![CDATA[%s]]></Encrypt></xml>" % (
            receiveid,
            enc,
        )
    else:
        body = (
            "<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt>"
            "<AgentID><![CDATA[]]></AgentID></xml>" % (receiveid, enc)
        )
    print(
        json.dumps(
            {"msg_signature": sig, "timestamp": timestamp, "nonce": nonce, "encrypt": enc, "body": body}
        )
    )


def main():
    mode, platform, receiveid, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    try:
        if mode == "encrypt":
            encrypt(platform, receiveid, args)
            return
        if mode == "check":
            if platform != "wecom":
                sys.exit("check is the WeCom URL verification: platform wecom")
            sig, timestamp, nonce, echostr = args
            plain = crypto_for(platform, receiveid).check_signature(sig, timestamp, nonce, echostr)
        elif mode == "decrypt":
            sig, timestamp, nonce = args
            body = sys.stdin.buffer.read().decode("utf-8")
            plain = crypto_for(platform, receiveid).decrypt_message(body, sig, timestamp, nonce)
        else:
            sys.exit("mode must be encrypt, check or decrypt, not " + mode)
    except (InvalidSignatureException, InvalidAppIdException, InvalidCorpIdException) as err:
        print("wechatpy refused: " + type(err).__name__, file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(plain)


main()

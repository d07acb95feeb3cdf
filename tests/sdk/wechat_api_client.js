// node wechat-api (npm 1.35.1) reading what wxtoken published to Redis, as an application
// would: getToken reads the `json` sink's key, saveToken refuses (wxtoken owns the token).
//
// Usage: node wechat_api_client.js API_BASE REDIS_PORT APPID
// The secret comes from OA_SECRET in the environment, never from argv. The endpoint is the
// stand-in, so any token fetch the SDK made would show there (the test asserts none).
// Redis is read with redis-cli (from the same Debian package as the server), which keeps
// this free of a Node Redis client.
'use strict';
const { execFileSync } = require('child_process');
const API = require('wechat-api');

const [base, port, appid] = process.argv.slice(2);

function redisGet(key) {
  const out = execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', port, '--raw', 'GET', key]);
  const text = out.toString().trim();
  return text === '' ? null : JSON.parse(text);
}

// The callbacks from docs/integrations/wechat-api.md.
function getToken(callback) {
  const t = redisGet('wxtoken:' + appid + ':access_token');
  if (!t) return callback(new Error('no token published for ' + appid));
  callback(null, { accessToken: t.access_token, expireTime: t.expires_at * 1000 });
}
function saveToken(token, callback) {
  callback(new Error('wxtoken owns the token: the SDK must not fetch one'));
}

const api = new API(appid, process.env.OA_SECRET, getToken, saveToken);
api.registerTicketHandle(
  (type, callback) => {
    const t = redisGet('wxtoken:' + appid + ':' + type);
    callback(null, t && { ticket: t.ticket, expireTime: t.expires_at * 1000 });
  },
  (type, ticket, callback) => callback(new Error('wxtoken owns the tickets')),
);
api.endpoint = base;

api.getMenu((err, menu) => {
  if (err) {
    console.error('getMenu failed: ' + err.message);
    process.exit(1);
  }
  api.getLatestTicket((err2, ticket) => {
    if (err2) {
      console.error('getLatestTicket failed: ' + err2.message);
      process.exit(1);
    }
    getToken((e, token) => {
      console.log(JSON.stringify({ menu, token: token.accessToken, ticket: ticket.ticket }));
    });
  });
});

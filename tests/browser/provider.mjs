// A certified OpenID provider for the sign-in tests: one client (public with PKCE, or
// confidential with CLIENT_SECRET), and its development login form (any login, any password).
// Refresh tokens are issued for `offline_access`; ID tokens live ID_TOKEN_TTL seconds.
// `POST /test/revoke` ends every grant, as an administrator revoking sessions would.
//
//   node provider.mjs PORT CLIENT_ID REDIRECT_URI POST_LOGOUT_REDIRECT_URI
import http from 'node:http';
import Provider from 'oidc-provider';

const [port, clientId, redirectUri, postLogoutRedirectUri] = process.argv.slice(2);
const secret = process.env.CLIENT_SECRET;

// The provider's storage, in memory, so that the test can revoke every grant at once.
const stores = new Map();
class MemoryAdapter {
  constructor(name) {
    if (!stores.has(name)) stores.set(name, new Map());
    this.store = stores.get(name);
  }
  async upsert(id, payload) { this.store.set(id, payload); }
  async find(id) { return this.store.get(id); }
  async findByUserCode(code) { return [...this.store.values()].find((p) => p.userCode === code); }
  async findByUid(uid) { return [...this.store.values()].find((p) => p.uid === uid); }
  async consume(id) { const p = this.store.get(id); if (p) p.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { this.store.delete(id); }
  async revokeByGrantId(grantId) {
    for (const [id, p] of this.store) if (p.grantId === grantId) this.store.delete(id);
  }
}

const provider = new Provider(`http://127.0.0.1:${port}`, {
  adapter: MemoryAdapter,
  clients: [{
    client_id: clientId,
    ...(secret ? { client_secret: secret, token_endpoint_auth_method: 'client_secret_basic' } : { token_endpoint_auth_method: 'none' }),
    redirect_uris: [redirectUri],
    post_logout_redirect_uris: [postLogoutRedirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  claims: { email: ['email'], openid: ['sub'] },
  ttl: { IdToken: Number(process.env.ID_TOKEN_TTL || 3600), AccessToken: Number(process.env.ID_TOKEN_TTL || 3600) },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id, email: `${id}@shop.example` }) }),
});
const refreshes = { count: 0 };
provider.on('grant.success', (ctx) => { if (ctx.oidc.params.grant_type === 'refresh_token') refreshes.count += 1; });
const handle = provider.callback();
http.createServer((req, res) => {
  if (req.url === '/test/revoke' && req.method === 'POST') {
    for (const name of ['Grant', 'RefreshToken', 'AccessToken', 'Session']) stores.get(name)?.clear();
    res.end('revoked\n');
  } else if (req.url === '/test/refreshes') {
    res.end(JSON.stringify(refreshes));
  } else {
    handle(req, res);
  }
}).listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`));

// A certified OpenID provider for the sign-in tests: one public client (PKCE required), and its
// development login form (any login, any password).
//
//   node provider.mjs PORT CLIENT_ID REDIRECT_URI POST_LOGOUT_REDIRECT_URI
import Provider from 'oidc-provider';

const [port, clientId, redirectUri, postLogoutRedirectUri] = process.argv.slice(2);
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    token_endpoint_auth_method: 'none',
    redirect_uris: [redirectUri],
    post_logout_redirect_uris: [postLogoutRedirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  claims: { email: ['email'], openid: ['sub'] },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id, email: `${id}@shop.example` }) }),
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`));

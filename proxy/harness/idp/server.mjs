// A real OpenID Connect provider (npm `oidc-provider` 9) for Portcullis' integration tests and
// demo. Loopback only; everything is in memory (optionally saved to a state file on SIGTERM so a
// stop/restart keeps grants and refresh tokens, like a real IdP coming back from an outage).
//
// Settings come from the environment (the Rust harness sets them, see `proxy/harness/src/idp.rs`):
//
//   IDP_PORT                        port on 127.0.0.1 (required; 0 picks a free one)
//   IDP_ISSUER                      default http://127.0.0.1:<port>
//   IDP_CLIENT_ID                   default "portcullis"
//   IDP_CLIENT_SECRET               default "portcullis-test-secret"
//   IDP_REDIRECT_URIS               comma-separated, exact
//   IDP_POST_LOGOUT_REDIRECT_URIS   comma-separated; a URI on the origin of one of them is also accepted
//   IDP_ACCESS_TOKEN_TTL            seconds, default 3600
//   IDP_ID_TOKEN_TTL                seconds, default 3600
//   IDP_REFRESH_TOKEN_TTL           seconds, default 14 days
//   IDP_ROTATE_REFRESH_TOKEN        "1" (default): every refresh returns a new refresh token and
//                                   consumes the old one; "0": oidc-provider's default policy
//   IDP_ALWAYS_ISSUE_REFRESH_TOKEN  "1": a refresh token even without offline_access; default "0"
//   IDP_STATE_FILE                  where to save/load the in-memory store across restarts
//   IDP_SIGNING_KEY_FILE            the private JWK that signs ID tokens: read when the file
//                                   exists, otherwise a new RSA key (new `kid`) is made and saved
//                                   there. A restart with the file removed is a key rotation.
//                                   Unset: oidc-provider's fixed development key
//   IDP_EXTRA_CLAIMS                comma-separated names of custom claims (e.g. "department,org")
//                                   released with scope `profile` (ID token and userinfo); an
//                                   account gets values for them with PUT /__admin/accounts/<login>
//
// When listening it prints exactly one line `READY <port>` on stdout.
//
// Test-only admin endpoints (loopback only, no auth), all JSON:
//   GET    /__admin/health                    {"ok":true}
//   GET    /__admin/stats                     counts of token endpoint grants by grant_type, etc.
//   POST   /__admin/revoke?account=<login>    destroys the account's grants (so its refresh
//                                            tokens and access tokens) and IdP sessions
//   PUT    /__admin/accounts/<login>          body {email?, email_verified?, name?, groups?,
//                                            <any IDP_EXTRA_CLAIMS name>?} overrides the
//                                            account's claims from now on
//   POST   /__admin/outage?status=503         every non-admin request answers that status
//   POST   /__admin/outage?hang=1             every non-admin request hangs (never answered)
//   DELETE /__admin/outage                    back to normal

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';

import Provider from 'oidc-provider';

const env = (name, fallback) => {
  const v = process.env[name];
  return v === undefined || v === '' ? fallback : v;
};
const list = (name) => env(name, '').split(',').map((s) => s.trim()).filter(Boolean);
const seconds = (name, fallback) => {
  const n = Number.parseInt(env(name, String(fallback)), 10);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive integer`);
  return n;
};

const portArg = process.argv.find((a) => a.startsWith('--port='));
const port = Number.parseInt(portArg ? portArg.slice('--port='.length) : env('IDP_PORT', '0'), 10);
const clientId = env('IDP_CLIENT_ID', 'portcullis');
const clientSecret = env('IDP_CLIENT_SECRET', 'portcullis-test-secret');
const redirectUris = list('IDP_REDIRECT_URIS');
const postLogoutRedirectUris = list('IDP_POST_LOGOUT_REDIRECT_URIS');
const accessTokenTtl = seconds('IDP_ACCESS_TOKEN_TTL', 3600);
const idTokenTtl = seconds('IDP_ID_TOKEN_TTL', 3600);
const refreshTokenTtl = seconds('IDP_REFRESH_TOKEN_TTL', 14 * 24 * 60 * 60);
const rotateAlways = env('IDP_ROTATE_REFRESH_TOKEN', '1') === '1';
const alwaysIssueRefreshToken = env('IDP_ALWAYS_ISSUE_REFRESH_TOKEN', '0') === '1';
const stateFile = env('IDP_STATE_FILE', '');
const signingKeyFile = env('IDP_SIGNING_KEY_FILE', '');
const standardClaims = ['sub', 'email', 'email_verified', 'name', 'groups'];
const extraClaims = list('IDP_EXTRA_CLAIMS').filter((c) => !standardClaims.includes(c));

// ---------------------------------------------------------------------------------------------
// Accounts

const fixtures = {
  alice: { email: 'alice@example.com', name: 'Alice Adams', groups: ['admins', 'users'] },
  bob: { email: 'bob@example.com', name: 'Bob Brown', groups: ['users'] },
  carol: { email: 'carol@example.org', name: 'Carol Clark', groups: ['contractors'] },
};
const overrides = new Map();

function profileOf(login) {
  const base = fixtures[login] ?? { email: `${login}@example.com`, name: login, groups: [] };
  return { email_verified: true, ...base, ...(overrides.get(login) ?? {}) };
}

// ---------------------------------------------------------------------------------------------
// Storage: a plain Map we can enumerate (for /__admin/revoke) and save (for restarts).

const store = new Map(); // key "Model:id" -> { name, id, payload, expiresAt (ms or null) }
const byGrant = new Map(); // grantId -> Set of keys
const byUid = new Map(); // uid -> id (Session)
const byUserCode = new Map(); // userCode -> id (DeviceCode)

function index(entry) {
  const key = `${entry.name}:${entry.id}`;
  const { payload } = entry;
  if (payload.grantId) {
    if (!byGrant.has(payload.grantId)) byGrant.set(payload.grantId, new Set());
    byGrant.get(payload.grantId).add(key);
  }
  if (payload.uid) byUid.set(payload.uid, entry.id);
  if (payload.userCode) byUserCode.set(payload.userCode, entry.id);
}

class MapAdapter {
  constructor(name) {
    this.name = name;
  }

  key(id) {
    return `${this.name}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const entry = {
      name: this.name,
      id,
      payload,
      expiresAt: typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : null,
    };
    store.set(this.key(id), entry);
    index(entry);
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt !== null && entry.expiresAt <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = byUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = byUserCode.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  // eslint-disable-next-line class-methods-use-this
  async revokeByGrantId(grantId) {
    for (const key of byGrant.get(grantId) ?? []) store.delete(key);
    byGrant.delete(grantId);
  }
}

function loadState() {
  if (!stateFile || !existsSync(stateFile)) return;
  const saved = JSON.parse(readFileSync(stateFile, 'utf8'));
  for (const entry of saved.entries ?? []) {
    store.set(`${entry.name}:${entry.id}`, entry);
    index(entry);
  }
  for (const [login, o] of Object.entries(saved.overrides ?? {})) overrides.set(login, o);
}

function saveState() {
  if (!stateFile) return;
  const entries = [...store.values()].filter((e) => e.expiresAt === null || e.expiresAt > Date.now());
  writeFileSync(stateFile, JSON.stringify({ entries, overrides: Object.fromEntries(overrides) }));
}

loadState();

// The signing key. oidc-provider computes its `kid` (the RFC 7638 thumbprint), so a new key
// always comes with a new `kid`.
function signingKey() {
  if (!signingKeyFile) return undefined;
  if (existsSync(signingKeyFile)) return JSON.parse(readFileSync(signingKeyFile, 'utf8'));
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };
  writeFileSync(signingKeyFile, JSON.stringify(jwk), { mode: 0o600 });
  return jwk;
}
const key = signingKey();

// ---------------------------------------------------------------------------------------------
// The provider

const stats = { token: {}, authorization: 0, end_session: 0, userinfo: 0 };

const configuration = {
  adapter: MapAdapter,
  ...(key ? { jwks: { keys: [key] } } : {}),
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutRedirectUris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  // Fixed keys so that IdP cookies survive a restart; this provider is for tests only.
  cookies: { keys: ['portcullis-test-idp-cookie-key'] },
  claims: {
    acr: null,
    sid: null,
    auth_time: null,
    iss: null,
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'groups', ...extraClaims],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  // Put the scope's claims in the ID token too, not only in userinfo: that is what the proxy
  // reads (and what most hosted IdPs do).
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: false },
    // RFC 9207's `iss` in the authorization response is always on in oidc-provider 9
    // (`authorization_response_iss_parameter_supported: true` in discovery): no flag exists.
  },
  pkce: {
    // S256 is the only method oidc-provider 9 accepts; required for public clients only, so a
    // confidential client may use it or not.
    required: (_ctx, client) => client.clientAuthMethod === 'none',
  },
  ttl: {
    AccessToken: accessTokenTtl,
    IdToken: idTokenTtl,
    RefreshToken: refreshTokenTtl,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: 14 * 24 * 60 * 60,
    Grant: 14 * 24 * 60 * 60,
  },
  issueRefreshToken: async (_ctx, client, source) => client.grantTypeAllowed('refresh_token')
    && (alwaysIssueRefreshToken || source.scopes.has('offline_access')),
  rotateRefreshToken: rotateAlways
    ? () => true
    : (ctx) => ctx.oidc.entities.RefreshToken.ttlPercentagePassed() >= 70,
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        const p = profileOf(sub);
        const extra = Object.fromEntries(extraClaims.filter((c) => c in p).map((c) => [c, p[c]]));
        return {
          ...extra,
          sub,
          email: p.email,
          email_verified: p.email_verified,
          name: p.name,
          groups: p.groups,
        };
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>IdP error</title></head><body><h1>IdP error</h1><pre>${
      Object.entries(out).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join('\n')}</pre></body></html>`;
  },
};

// The logout confirmation page: the same form oidc-provider renders, with the "yes" answer as a
// hidden input so a scripted browser that submits the page's form signs out (a person still sees
// one button).
configuration.features.rpInitiatedLogout.logoutSource = async (ctx, form) => {
  const withYes = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
  ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign out</title></head><body>
<h1>Sign out of the test IdP?</h1>
${withYes}
<button autofocus type="submit" form="op.logoutForm">Yes, sign me out</button>
</body></html>`;
};
configuration.features.rpInitiatedLogout.postLogoutSuccessSource = async (ctx) => {
  ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed out</title></head><body><h1>Signed out</h1></body></html>';
};

const issuer = env('IDP_ISSUER', `http://127.0.0.1:${port}`);
// The issuer needs the port; with IDP_PORT=0 we learn it only once listening, so a placeholder
// issuer would be wrong. Require a real port unless an issuer is given.
if (port === 0 && !process.env.IDP_ISSUER) {
  console.error('IDP_PORT=0 needs IDP_ISSUER; pass a concrete port (the Rust harness picks one)');
  process.exit(2);
}

const provider = new Provider(issuer, configuration);

// Post-logout redirect URIs: exact match, or same origin as a registered one (the proxy may
// append a path or query to its host URL; the harness cannot know which).
{
  const exact = provider.Client.prototype.postLogoutRedirectUriAllowed;
  const origins = new Set(postLogoutRedirectUris.map((u) => {
    try { return new URL(u).origin; } catch { return undefined; }
  }).filter(Boolean));
  provider.Client.prototype.postLogoutRedirectUriAllowed = function allowed(value) {
    if (exact.call(this, value)) return true;
    try { return origins.has(new URL(value).origin); } catch { return false; }
  };
}

provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params?.grant_type ?? 'unknown';
  stats.token[type] = (stats.token[type] ?? 0) + 1;
});
provider.on('authorization.success', () => { stats.authorization += 1; });
provider.on('end_session.success', () => { stats.end_session += 1; });
provider.on('userinfo.success', () => { stats.userinfo += 1; });
provider.on('server_error', (_ctx, err) => { console.error('server_error', err); });

let outage = null; // null | { status } | { hang: true }

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/__admin/')) {
    if (outage?.hang) {
      await new Promise(() => {});
    }
    if (outage?.status) {
      ctx.status = outage.status;
      ctx.body = { error: 'simulated_outage' };
      return undefined;
    }
    return next();
  }
  const rest = ctx.path.slice('/__admin/'.length);
  ctx.type = 'json';
  if (ctx.method === 'GET' && rest === 'health') {
    ctx.body = { ok: true };
  } else if (ctx.method === 'GET' && rest === 'stats') {
    ctx.body = stats;
  } else if (ctx.method === 'POST' && rest === 'revoke') {
    const account = ctx.query.account;
    let grants = 0;
    let sessions = 0;
    for (const [key, entry] of [...store.entries()]) {
      if (entry.payload.accountId !== account) continue;
      if (entry.name === 'Grant') {
        store.delete(key);
        for (const k of byGrant.get(entry.id) ?? []) store.delete(k);
        byGrant.delete(entry.id);
        grants += 1;
      } else if (entry.name === 'Session') {
        store.delete(key);
        sessions += 1;
      }
    }
    ctx.body = { account, grants, sessions };
  } else if (ctx.method === 'PUT' && rest.startsWith('accounts/')) {
    const login = decodeURIComponent(rest.slice('accounts/'.length));
    overrides.set(login, { ...(overrides.get(login) ?? {}), ...(await readJson(ctx.req)) });
    ctx.body = { login, profile: profileOf(login) };
  } else if (ctx.method === 'POST' && rest === 'outage') {
    outage = ctx.query.hang ? { hang: true } : { status: Number.parseInt(ctx.query.status ?? '503', 10) };
    ctx.body = { outage };
  } else if (ctx.method === 'DELETE' && rest === 'outage') {
    outage = null;
    ctx.body = { outage };
  } else {
    ctx.status = 404;
    ctx.body = { error: 'unknown admin endpoint' };
  }
  return undefined;
});

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});

function shutdown() {
  try {
    saveState();
  } finally {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  }
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

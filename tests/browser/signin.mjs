// Drives Debian's Chromium through a sign-in and prints what it saw, as JSON, for the Rust test:
// open a protected page, sign in at the provider, come back; reload; sign-in again after the
// session cookie is gone.
//
//   node signin.mjs URL PROVIDER_ORIGIN
import { chromium } from 'playwright-core';

const [url, providerOrigin] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const out = {};
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const providerRequests = () => requests.filter((u) => u.startsWith(providerOrigin)).length;
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));

  // The provider's login form, its consent screen, then back on the page.
  const signIn = async () => {
    await page.fill('input[name=login]', 'alice');
    await page.fill('input[name=password]', 'anything');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    await Promise.all([page.waitForURL((u) => u.toString().startsWith(url)), page.click('button[type=submit]')]);
  };
  await page.goto(url);
  out.loginPage = { url: page.url(), title: await page.title() };
  if (out.loginPage.title !== 'Sign-in') out.loginPage.body = await page.innerText('body');
  await signIn();
  out.afterSignIn = { url: page.url(), body: JSON.parse(await page.innerText('body')) };
  out.cookies = (await context.cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, secure: c.secure, domain: c.domain }));

  const before = providerRequests();
  await page.reload();
  out.afterReload = { url: page.url(), body: JSON.parse(await page.innerText('body')), providerRequests: providerRequests() - before };

  // REFRESH_WAIT seconds (the ID token's lifetime and a little): the session's claims go stale
  // and are refreshed behind the scenes, for a page load and for a script; once the provider
  // revoked the grant, the next page load goes to sign in.
  const wait = Number(process.env.REFRESH_WAIT || 0);
  if (wait) {
    const session = async () => (await context.cookies()).filter((c) => c.name.startsWith('portcullis-session')).map((c) => c.value).join('|');
    const first = await session();
    await page.waitForTimeout(wait * 1000);
    const beforeStale = providerRequests();
    await page.reload();
    out.afterStaleReload = { url: page.url(), body: JSON.parse(await page.innerText('body')), providerRequests: providerRequests() - beforeStale, cookieChanged: (await session()) !== first };
    const second = await session();
    await page.waitForTimeout(wait * 1000);
    out.scriptWhenStale = await page.evaluate(async () => {
      const r = await fetch('/api/orders', { headers: { Accept: 'application/json' } });
      return { status: r.status, body: await r.text() };
    });
    out.scriptWhenStale.cookieChanged = (await session()) !== second;
    await fetch(`${providerOrigin}/test/revoke`, { method: 'POST' });
    await page.waitForTimeout(wait * 1000);
    await page.goto(url);
    out.afterRevoke = { url: page.url() };
    await signIn();
    out.afterSecondSignIn = { url: page.url() };
  }

  // Sign out: a form button of the page (same origin), the provider's confirmation, and back
  // to a protected page: to the provider's login form again.
  await page.evaluate(() => {
    const f = document.createElement('form');
    f.method = 'POST';
    f.action = '/.portcullis/logout';
    document.body.appendChild(f);
    f.submit();
  });
  await page.waitForURL((u) => u.toString().startsWith(providerOrigin));
  out.signOutPage = { url: page.url(), title: await page.title() };
  await Promise.all([page.waitForNavigation(), page.click('button[name=logout][value=yes]')]);
  await page.waitForURL((u) => u.toString().startsWith(providerOrigin) && u.toString().includes('/interaction/'));
  out.afterSignOut = { url: page.url(), title: await page.title(), sessionCookies: (await context.cookies()).filter((c) => c.name.startsWith('portcullis-session')).length };

  // Without the session cookie: to the provider again.
  await context.clearCookies();
  await page.goto(url);
  out.afterCookiesCleared = { url: page.url() };
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));

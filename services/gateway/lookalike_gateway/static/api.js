// Talking to the Lookalike REST API (same origin) and turning its errors into sentences for shoppers.

const KEY_STORAGE = "lookalike.apiKey";

/** The API key, when the server needs one: `?api_key=` on the page address (kept for this tab only). */
function loadApiKey() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("api_key");
  try {
    if (fromUrl) {
      sessionStorage.setItem(KEY_STORAGE, fromUrl);
      url.searchParams.delete("api_key");
      history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    }
    return sessionStorage.getItem(KEY_STORAGE) || fromUrl || "";
  } catch {
    return fromUrl || "";
  }
}

const apiKey = loadApiKey();

/** A failed API call: `status` 0 and `network` true when the server could not be reached. */
export class ApiFailure extends Error {
  constructor({ status = 0, code = "", message = "", network = false, retryAfter = 0, requestId = "" }) {
    super(message || code || `HTTP ${status}`);
    this.name = "ApiFailure";
    this.status = status;
    this.code = code;
    this.serverMessage = message;
    this.network = network;
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

/** fetch() that returns parsed JSON or throws an ApiFailure (AbortError is passed through). */
export async function requestJson(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (apiKey) headers["X-API-Key"] = apiKey;
  let response;
  try {
    response = await fetch(path, { method, body, signal, headers, credentials: "same-origin" });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiFailure({ network: true, message: String(err && err.message) });
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    payload = null;
  }
  if (response.ok && payload) return payload;
  const error = (payload && payload.error) || {};
  throw new ApiFailure({
    status: response.status,
    code: error.code || "",
    message: error.message || (response.ok ? "the answer was not JSON" : ""),
    retryAfter: Number(response.headers.get("Retry-After")) || 0,
    requestId: response.headers.get("X-Request-ID") || "",
  });
}

/** Image URLs go through <img>, which cannot send headers: the key travels as a query parameter. */
export function withKey(url) {
  if (!apiKey || !url) return url;
  return url + (url.includes("?") ? "&" : "?") + "api_key=" + encodeURIComponent(apiKey);
}

export function productPath(id) {
  return `/v1/products/${encodeURIComponent(id)}`;
}

const FORMATS = "JPEG, PNG, WebP, GIF or BMP";

function megabytes(bytes) {
  const mb = bytes / (1024 * 1024);
  return mb >= 10 ? `${Math.round(mb)} MB` : `${Math.round(mb * 10) / 10} MB`;
}

/**
 * What to tell the shopper about a failure: {text, retry, kind}.
 * `context` is "photo" (an uploaded photo), "similar" (more like this) or "product" (loading one product).
 */
export function describeError(failure, context = "photo") {
  if (!(failure instanceof ApiFailure)) {
    return { kind: "bug", retry: true, text: "Something went wrong on this page. Please try again." };
  }
  if (failure.network) {
    return {
      kind: "network", retry: true,
      text: "We couldn't reach Lookalike. Check your internet connection, then try again.",
    };
  }
  const { status, code } = failure;
  const message = (failure.serverMessage || "").toLowerCase();
  const tooLarge = status === 413 || (code === "RESOURCE_EXHAUSTED" && /limit/.test(message) && /bytes/.test(message));
  if (tooLarge) {
    const limit = /limit of (\d+)/.exec(message);
    const under = limit ? ` under ${megabytes(Number(limit[1]))}` : "";
    return {
      kind: "too_large", retry: false,
      text: `That photo is too large for us to search. Please choose a smaller one${under}.`,
    };
  }
  if (context === "photo" && (status === 415 || (status === 400 && /image|upload/.test(message)))) {
    return {
      kind: "not_image", retry: false,
      text: `That file isn't a picture we can read. Please choose a photo (${FORMATS}).`,
    };
  }
  if (status === 401 || status === 403) {
    return {
      kind: "auth", retry: false,
      text: "This Lookalike server needs an access key. Add ?api_key=YOUR_KEY to the page address, " +
        "or ask the site owner for one.",
    };
  }
  if (status === 404) {
    return context === "photo"
      ? { kind: "missing", retry: false, text: "This Lookalike server doesn't offer photo search. Please check its address." }
      : { kind: "missing", retry: false, text: "That product isn't in the catalogue any more. Please pick another one." };
  }
  if (status === 429) {
    const wait = failure.retryAfter ? ` in ${failure.retryAfter} second${failure.retryAfter === 1 ? "" : "s"}` : " in a moment";
    return { kind: "busy", retry: true, text: `We're getting a lot of searches right now. Please try again${wait}.` };
  }
  if (status === 503) {
    return {
      kind: "starting", retry: true,
      text: "Lookalike is starting up or briefly unavailable. Please try again in a few seconds.",
    };
  }
  if (status === 504) {
    return { kind: "timeout", retry: true, text: "The search took too long to answer. Please try again." };
  }
  if (status === 400) {
    return {
      kind: "invalid", retry: false,
      text: "We couldn't run that search. Please check the price range and try again.",
    };
  }
  return {
    kind: "server", retry: true,
    text: `Something went wrong on our side (error ${status}). Please try again in a moment.`,
  };
}

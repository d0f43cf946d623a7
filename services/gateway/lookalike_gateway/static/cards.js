// Result cards and the small formatting helpers the page shares.
import { withKey } from "./api.js";

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function plural(n, one, many = one + "s") {
  return `${n} ${n === 1 ? one : many}`;
}

function percent(score) {
  return Math.round(Math.max(0, Math.min(1, Number(score) || 0)) * 100);
}

function formatPrice(price, attributes) {
  if (price === null || price === undefined || !Number.isFinite(Number(price))) return "";
  const currency = attributes && /^[A-Za-z]{3}$/.test(attributes.currency || "") ? attributes.currency.toUpperCase() : "";
  try {
    if (currency) return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(price);
  } catch { /* unknown currency code: plain number below */ }
  return new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(price);
}

export function formatMs(ms) {
  if (!Number.isFinite(ms)) return "";
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

export function titleOf(product) {
  return (product.title || "").trim() || "Untitled product";
}

export function categoryLabel(category) {
  return category ? category.charAt(0).toUpperCase() + category.slice(1) : "";
}

/** One result card; `onSimilar(result)` runs "More like this". */
export function card(result, rank, onSimilar) {
  const title = titleOf(result);
  const pct = percent(result.score);
  const price = formatPrice(result.price, result.attributes);
  const thumb = el("div", { class: "thumb" });
  // the product's photo that matched best (its main photo unless another of its photos matched better)
  const matched = result.matched_image > 0 && result.matched_image_url ? result.matched_image_url : result.image_url;
  if (matched) {
    const img = el("img", {
      src: withKey(matched), alt: title, loading: "lazy", decoding: "async", width: "300", height: "300",
    });
    img.addEventListener("error", () => thumb.classList.add("thumb-missing"), { once: true });
    thumb.append(img);
    if (matched !== result.image_url) {
      thumb.append(el("span", { class: "matched-photo", text: `Photo ${result.matched_image + 1}` }));
    }
  } else {
    thumb.classList.add("thumb-missing");
  }

  const bar = el("span", { class: "score-fill" });
  bar.style.setProperty("--score", `${pct}%`);
  return el("li", { class: "card", dataset: { id: result.id, category: result.category || "", rank: String(rank),
                                               matched: String(result.matched_image || 0) } },
    thumb,
    el("div", { class: "card-body" },
      el("div", { class: "card-row" },
        result.category ? el("span", { class: "card-category", text: result.category }) : null,
        price ? el("span", { class: "card-price", text: price }) : null),
      el("h3", { class: "card-title", title, text: title }),
      el("div", { class: "score", title: `Similarity score ${Number(result.score).toFixed(3)}` },
        el("span", { class: "score-bar", "aria-hidden": "true" }, bar),
        el("span", { class: "score-text", text: `${pct}% match` })),
      el("button", {
        type: "button", class: "button button-secondary more-like-this",
        "aria-label": `More like ${title}`,
        onclick: () => onSimilar(result),
      }, "More like this")));
}

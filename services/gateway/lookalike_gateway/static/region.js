// Search by a region: the shopper drags a box over their photo; the box goes to the API as `crop`
// (x, y, width, height as fractions of the photo as displayed, i.e. after EXIF orientation).

const MIN_PX = 12;  // a smaller drag is a tap, not a box

function clamp01(v) {
  return Math.max(0, Math.min(1, v));
}

/** Where the photo is drawn inside its frame (the <img> uses object-fit: contain). */
function contentRect(img) {
  const box = img.getBoundingClientRect();
  const nw = img.naturalWidth || box.width;
  const nh = img.naturalHeight || box.height;
  const scale = Math.min(box.width / nw, box.height / nh);
  const width = nw * scale;
  const height = nh * scale;
  return { left: box.left + (box.width - width) / 2, top: box.top + (box.height - height) / 2, width, height };
}

/**
 * Lets the shopper draw a box on `img` (inside `frame`). `onChange(box)` gets {x, y, width, height} in 0..1
 * when a box is drawn and null when it is cleared. Returns {clear(), box()}.
 */
export function attachRegion(frame, img, onChange) {
  const outline = document.createElement("div");
  outline.className = "region-box";
  outline.hidden = true;
  outline.setAttribute("aria-hidden", "true");
  frame.append(outline);
  let enabled = false;
  let start = null;
  let drawn = null;

  function at(event) {
    const r = contentRect(img);
    return { x: clamp01((event.clientX - r.left) / r.width), y: clamp01((event.clientY - r.top) / r.height), r };
  }

  function draw(box) {
    if (!box) {
      outline.hidden = true;
      frame.classList.remove("has-region");
      return;
    }
    const r = contentRect(img);
    const f = frame.getBoundingClientRect();
    outline.style.left = `${r.left - f.left + box.x * r.width}px`;
    outline.style.top = `${r.top - f.top + box.y * r.height}px`;
    outline.style.width = `${box.width * r.width}px`;
    outline.style.height = `${box.height * r.height}px`;
    outline.hidden = false;
    frame.classList.add("has-region");
  }

  function between(a, b) {
    const x = Math.min(a.x, b.x);
    const y = Math.min(a.y, b.y);
    return { x, y, width: Math.min(1 - x, Math.abs(a.x - b.x)), height: Math.min(1 - y, Math.abs(a.y - b.y)) };
  }

  frame.addEventListener("pointerdown", (event) => {
    if (!enabled || !img.naturalWidth || event.button > 0) return;
    event.preventDefault();
    frame.setPointerCapture(event.pointerId);
    start = at(event);
  });
  frame.addEventListener("pointermove", (event) => {
    if (!start) return;
    draw(between(start, at(event)));
  });
  const finish = (event) => {
    if (!start) return;
    const end = at(event);
    const box = between(start, end);
    start = null;
    if (box.width * end.r.width < MIN_PX || box.height * end.r.height < MIN_PX) {
      draw(drawn);  // a tap: keep what was there
      return;
    }
    drawn = box;
    draw(drawn);
    onChange(drawn);
  };
  frame.addEventListener("pointerup", finish);
  frame.addEventListener("pointercancel", () => {
    start = null;
    draw(drawn);
  });
  window.addEventListener("resize", () => draw(drawn));

  return {
    /** Drawing is on for the shopper's own photo only (not for "more like this"). */
    enable(on) {
      enabled = on;
      frame.classList.toggle("can-draw", on);
    },
    clear() {
      drawn = null;
      draw(null);
    },
    box: () => drawn,
  };
}

/** The API's text form of a box: "x,y,width,height", corners rounded to 4 decimals (never past the edge). */
export function cropParam(box) {
  const round = (v) => Math.round(clamp01(v) * 10000) / 10000;
  const x0 = round(box.x);
  const y0 = round(box.y);
  const x1 = round(box.x + box.width);
  const y1 = round(box.y + box.height);
  return [x0, y0, Number((x1 - x0).toFixed(4)), Number((y1 - y0).toFixed(4))].join(",");
}

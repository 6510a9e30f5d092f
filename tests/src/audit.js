(() => {
  const problems = [];
  const nameOf = (e) => {
    const label = e.getAttribute('aria-label');
    if (label && label.trim()) return label.trim();
    const by = e.getAttribute('aria-labelledby');
    if (by) return by.split(/\s+/).map((id) => document.getElementById(id)?.textContent || '').join(' ').trim();
    if (e.id) { const l = document.querySelector(`label[for="${e.id}"]`); if (l && l.textContent.trim()) return l.textContent.trim(); }
    const wrap = e.closest('label'); if (wrap && wrap.textContent.trim()) return wrap.textContent.trim();
    if (['INPUT', 'SELECT', 'TEXTAREA'].includes(e.tagName)) return (e.getAttribute('title') || '').trim();
    return (e.textContent || '').trim();
  };
  const visible = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'; };
  for (const e of document.querySelectorAll('a[href], button, input, select, textarea, summary')) {
    if (!visible(e)) continue;
    const what = `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} "${(e.textContent || e.value || '').trim().slice(0, 30)}"`;
    if (!nameOf(e)) problems.push(`no accessible name: ${what}`);
    // The target: a checkbox's is its label; a link in running text is exempt.
    const target = e.type === 'checkbox' && e.closest('label') ? e.closest('label') : e;
    const r = target.getBoundingClientRect();
    const inText = e.tagName === 'A' && getComputedStyle(e).display === 'inline';
    if (!inText && (r.height < 47.5 || r.width < 47.5)) problems.push(`target ${Math.round(r.width)}x${Math.round(r.height)}: ${what}`);
  }
  for (const img of document.querySelectorAll('img')) if (!img.hasAttribute('alt')) problems.push(`img without alt: ${img.src}`);
  // Text contrast (WCAG AA: 4.5:1, 3:1 for large text) against the first
  // opaque background behind it; a disabled control is exempt, as WCAG
  // exempts inactive components.
  const rgba = (c) => (c.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (e) => {
    for (let n = e; n; n = n.parentElement) {
      const c = rgba(getComputedStyle(n).backgroundColor);
      if (c.length >= 3 && (c.length === 3 || c[3] > 0.5)) return c;
    }
    return [255, 255, 255];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    const e = t.parentElement;
    if (!t.textContent.trim() || !e || seen.has(e) || !visible(e) || e.closest(':disabled, noscript')) continue;
    seen.add(e);
    const style = getComputedStyle(e);
    if (Number(style.opacity) === 0) continue;
    const fg = lum(rgba(style.color)), bg = lum(background(e));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) problems.push(`contrast ${ratio.toFixed(2)} < ${need}: ${e.tagName.toLowerCase()} "${t.textContent.trim().slice(0, 30)}"`);
  }
  return problems;
})()

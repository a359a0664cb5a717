#!/bin/sh
# Rebuilds the two evaluation courses from the Debian packages they ship in (Debian 12 "bookworm").
# Needs: apt-get (network to a Debian mirror), dpkg-deb, pandoc, chromium.
# Usage: eval/courses/make.sh        (from anywhere; writes eval/courses/{git,debian-reference,licenses})
set -eu

GIT_DOC=1:2.39.5-0+deb12u3
DEBREF=2.100

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# apt-get download fetches exactly these versions; a mirror without them fails here, loudly.
apt-get download "git-doc=$GIT_DOC" "debian-reference-en=$DEBREF" "debian-reference-common=$DEBREF"
for deb in ./*.deb; do dpkg-deb -x "$deb" out; done
gitdoc=out/usr/share/doc/git-doc
debref=out/usr/share/debian-reference

# Chromium prints to PDF as a user would "save as PDF"; a fresh profile keeps it from phoning home.
to_pdf() {
    profile=$(mktemp -d)
    chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$profile" \
        --no-pdf-header-footer --print-to-pdf="$2" "file://$(pwd)/$1" 2>/dev/null
    rm -rf "$profile"
}

# -- git: the user manual and four tutorial pages, one of them as PDF ----------------------------
rm -rf "$here/git"/*.html "$here/git"/*.pdf "$here/git"/*.docx
mkdir -p "$here/git"
for page in user-manual gittutorial giteveryday gitrevisions; do
    cp "$gitdoc/$page.html" "$here/git/"
done
to_pdf "$gitdoc/gittutorial-2.html" "$here/git/gittutorial-2.pdf"

# -- Debian Reference: chapters 1, 3, 4, 5 and 8, chapter 5 as DOCX --------------------------------
rm -rf "$here/debian-reference"/*.html "$here/debian-reference"/*.pdf "$here/debian-reference"/*.docx
mkdir -p "$here/debian-reference"
for ch in ch01 ch03 ch04 ch08; do
    cp "$debref/$ch.en.html" "$here/debian-reference/"
done
SOURCE_DATE_EPOCH=1675468800 pandoc --resource-path="$debref" "$debref/ch05.en.html" -o "$here/debian-reference/ch05.en.docx"

# -- the licences that travel with the text -------------------------------------------------------
mkdir -p "$here/licenses"
cp "$gitdoc/copyright" "$here/licenses/git-doc.copyright"
cp out/usr/share/doc/debian-reference-en/copyright "$here/licenses/debian-reference.copyright"
# both are GPL-2 (git-doc) / GPL-2+ (Debian Reference): the licence text goes along with copies
cp /usr/share/common-licenses/GPL-2 "$here/licenses/GPL-2"

ls -l "$here/git" "$here/debian-reference"

# Writes a C file defining `const char NAME[]` (the bytes of IN, NUL-terminated) and
# `const unsigned long NAME_len`, so a document ships inside the binary.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR len "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
file(WRITE ${OUT}.tmp "/* generated from ${IN} by cmake/embed_file.cmake */\nconst char ${NAME}[] = {${hex} 0};\nconst unsigned long ${NAME}_len = ${len};\n")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)

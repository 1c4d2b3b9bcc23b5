/* test_docs.c - the configuration reference in docs/CONFIG.md is the output of
 * config_help(): a key added or changed without its documentation fails here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chorus/config.h"
#include "testutil.h"

static char *read_all(FILE *f)
{
    size_t cap = 1 << 16, len = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t n;
    while ((n = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 == cap) {
            cap *= 2;
            s = realloc(s, cap);
            assert_non_null(s);
        }
    }
    s[len] = '\0';
    return s;
}

static void test_config_md_lists_every_key(void **state)
{
    (void)state;
    char *help = NULL;
    size_t helplen = 0;
    FILE *mem = open_memstream(&help, &helplen);
    assert_non_null(mem);
    config_help(mem);
    fclose(mem);

    FILE *f = fopen(CHORUS_SOURCE_DIR "/docs/CONFIG.md", "r");
    assert_non_null(f);
    char *doc = read_all(f);
    fclose(f);
    if (!strstr(doc, help))
        fail_msg("docs/CONFIG.md is out of date: regenerate its code block from "
                 "`build/cmd/chorus --help`");
    free(doc);
    free(help);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_md_lists_every_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

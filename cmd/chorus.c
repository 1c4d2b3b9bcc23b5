/* chorus: one binary for every role; `chorus run --roles gateway,wss,outbox,indexer,scaler`
 * runs any subset of them in one process on one libev loop. */
#include "gateway.h"
#include "indexer.h"
#include "outbox.h"
#include "wss.h"

int main(int argc, char **argv)
{
    const role_def *roles[] = {&gateway_role, &wss_role, &outbox_role, &indexer_role,
                               &scaler_role};
    return app_main(argc, argv, roles, (int)(sizeof roles / sizeof roles[0]), NULL);
}

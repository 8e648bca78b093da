"""moto server, taught AWS's answer where moto (pinned in the Makefile) differs.

The harness starts moto through this file; each patch cites what AWS does.
"""

import sys

from botocore.exceptions import ClientError
from moto.server import main
from moto.stepfunctions import responses
from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_lambda


def send_task_failure(self):
    # moto passes SendTaskFailure's `error` on and drops its `cause`; AWS hands both to the
    # waiting state's Catch ({"Error", "Cause"}), the cause up to 32,768 characters
    # (https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskFailure.html).
    self.stepfunction_backend.send_task_failure(
        self._get_param("taskToken"),
        error=self._get_param("error"),
        cause=self._get_param("cause"),
    )
    return responses.EmptyResult()


responses.StepFunctionResponse.send_task_failure = send_task_failure


_lambda_from_error = state_task_lambda.StateTaskLambda._from_error


def lambda_from_error(self, env, ex):
    # moto names every refused Lambda invocation "Exception"; Step Functions raises the Lambda
    # service's own error as Lambda.<code> (Lambda.TooManyRequestsException when the account's
    # concurrency is taken, Lambda.ServiceException, ...), which Retry blocks name
    # (https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html).
    if isinstance(ex, ClientError):
        error = "Lambda." + ex.response["Error"]["Code"]
        return state_task_lambda.FailureEvent(
            env=env,
            error_name=state_task_lambda.CustomErrorName(error),
            event_type=state_task_lambda.HistoryEventType.LambdaFunctionFailed,
            event_details=state_task_lambda.EventDetails(
                lambdaFunctionFailedEventDetails=state_task_lambda.LambdaFunctionFailedEventDetails(
                    error=error,
                    cause=ex.response["Error"].get("Message", ""),
                )
            ),
        )
    return _lambda_from_error(self, env, ex)


state_task_lambda.StateTaskLambda._from_error = lambda_from_error

if __name__ == "__main__":
    sys.exit(main())
